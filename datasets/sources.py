"""Download sources of every dataset, read from the editable table ``sources.json``."""
import functools
import json
import os

_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sources.json")
_GDRIVE = "https://drive.google.com/file/d/{}/view"


@functools.lru_cache(maxsize=1)
def load_sources():
    with open(_TABLE) as f:
        table = json.load(f)
    return {key: value for key, value in table.items() if not key.startswith("_")}


def describe_downloads(config_name, only=None):
    """Lines like '  split_zhou_X.json: https://drive.google.com/...' for one dataset.

    ``only`` keeps the entries whose description mentions one of the given names.
    """
    entry = load_sources().get(config_name)
    if entry is None:
        return []
    lines = []
    for item in entry["downloads"]:
        if only and not any(name in item["what"] for name in only):
            continue
        where = item.get("url") or (_GDRIVE.format(item["gdrive"]) if "gdrive" in item else "")
        line = f"  {item['what']}" + (f": {where}" if where else "")
        if item.get("note"):
            line += f" ({item['note']})"
        lines.append(line)
    return lines
