"""Editing a saved artifact the way an attacker would: change any member or the manifest, then re-hash everything."""

import json
import zipfile

from dlc.export import member_hashes, write_artifact


def read_members(path) -> tuple[dict, dict[str, bytes]]:
    """(the manifest, every other member but integrity.json) of an artifact file."""
    with zipfile.ZipFile(path) as z:
        data = {n: z.read(n) for n in z.namelist()}
    data.pop("integrity.json", None)
    return json.loads(data.pop("manifest.json")), data


def reseal(src, dst, graph=None, manifest=None, members=None, key=None) -> None:
    """Copy an artifact with graph.json, the manifest or the members edited in place by the given functions, then
    re-hash every member and the manifest (and sign with `key`), so that only the loader's own checks can refuse it."""
    m, data = read_members(src)
    if graph is not None:
        doc = json.loads(data["graph.json"])
        graph(doc)
        data["graph.json"] = json.dumps(doc).encode()
    if members is not None:
        members(data)
    m["members"] = member_hashes(data)
    if manifest is not None:
        manifest(m)
    write_artifact(dst, m, data, key=key)
