from twisted.application.service import ServiceMaker

tgw = ServiceMaker(
    "tgw", "gwcore.runtime.tap", "Terminating gateway for a Consul-style service mesh", "tgw"
)
