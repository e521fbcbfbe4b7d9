"""What a reload changes, in words: sites, plugin stacks and (file catalog) destinations."""

from __future__ import annotations

from gwcore.runtime.config_check import CheckedConfig


def describe_changes(old: CheckedConfig, new: CheckedConfig) -> list[str]:
    """One line per change between two good configs (empty when nothing a site uses changed)."""
    assert old.config is not None and new.config is not None
    before = {s.key: s for s in old.config.sites}
    after = {s.key: s for s in new.config.sites}
    lines = [f"site {key} added (listen {after[key].listen})" for key in after.keys() - before]
    lines += [f"site {key} removed" for key in before.keys() - after]
    for key in sorted(before.keys() & after.keys()):
        was, now = before[key], after[key]
        if was == now:
            continue
        old_plugins, new_plugins = set(was.plugins), set(now.plugins)
        if old_plugins != new_plugins:
            added = ", ".join(sorted(new_plugins - old_plugins)) or "none"
            removed = ", ".join(sorted(old_plugins - new_plugins)) or "none"
            lines.append(f"site {key}: plugins added: {added}; removed: {removed}")
        changed = sorted(
            name
            for name in was.__slots__  # type: ignore[attr-defined]
            if name not in ("plugins", "sections") and getattr(was, name) != getattr(now, name)
        )
        changed += sorted(
            f"[{name}]"
            for name in set(was.sections) | set(now.sections)
            if was.sections.get(name) != now.sections.get(name)
        )
        if changed:
            lines.append(f"site {key} changed: {', '.join(changed)}")
    for key in sorted(before.keys() & after.keys()):
        was_found, now_found = old.findings.get(key), new.findings.get(key)
        if was_found is None or now_found is None:
            continue
        if was_found.destinations is None or now_found.destinations is None:
            continue
        old_names = {str(d.service) for d in was_found.destinations}
        new_names = {str(d.service) for d in now_found.destinations}
        if old_names != new_names:
            added = ", ".join(sorted(new_names - old_names)) or "none"
            removed = ", ".join(sorted(old_names - new_names)) or "none"
            lines.append(f"site {key}: destinations added: {added}; removed: {removed}")
    return lines
