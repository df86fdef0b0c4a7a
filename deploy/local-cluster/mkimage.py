"""Packs a root filesystem directory into a docker-archive tarball (one layer), the format
`ctr images import` loads: no Docker daemon, no registry.

    python3 mkimage.py OUT.tar REF ROOTFS_DIR ENTRYPOINT_JSON [USER] [WORKDIR]

The layer is reproducible: entries sorted, owners and modes kept, times clamped to 0.
"""
import hashlib
import io
import json
import os
import sys
import tarfile

out, ref, rootfs, entry = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
user = sys.argv[5] if len(sys.argv) > 5 else ""
workdir = sys.argv[6] if len(sys.argv) > 6 else "/"


def clamp(info):
    info.mtime = 0
    return info


def add_tree(t, top):
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            path = os.path.join(dirpath, name)
            t.add(path, arcname=os.path.relpath(path, top), recursive=False, filter=clamp)


layer_path = out + ".layer"
with tarfile.open(layer_path, mode="w", format=tarfile.PAX_FORMAT) as t:
    add_tree(t, rootfs)
h = hashlib.sha256()
with open(layer_path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
diff_id = "sha256:" + h.hexdigest()
config = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Entrypoint": entry,
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG=C.UTF-8"],
        "WorkingDir": workdir,
        **({"User": user} if user else {}),
    },
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
}
cfg = json.dumps(config, sort_keys=True).encode()
cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
layer_name = diff_id[7:] + "/layer.tar"
manifest = json.dumps([{"Config": cfg_name, "RepoTags": [ref], "Layers": [layer_name]}]).encode()
with tarfile.open(out, "w") as t:
    t.add(layer_path, arcname=layer_name, filter=clamp)
    for name, data in ((cfg_name, cfg), ("manifest.json", manifest)):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        t.addfile(info, io.BytesIO(data))
os.unlink(layer_path)
