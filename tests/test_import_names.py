"""No top-level import name of this project is also a top-level module of an installed distribution.

Our kernel package was once called ``kernels``; transformers 5.25 began to require Hugging Face's
``kernels`` distribution, and ours, first on sys.path from the repository root, shadowed it, so
every transformers model failed to load. This guard names both sides of any such collision.
"""

import importlib.metadata as md
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN_DISTRIBUTION = "imd-hpc"


def project_import_names(root: Path = ROOT) -> set[str]:
    """Packages (folders with __init__.py) and modules at the repository root: what
    ``import NAME`` finds from there."""
    names = {p.parent.name for p in root.glob("*/__init__.py")}
    names |= {p.stem for p in root.glob("*.py")}
    return names


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_top_level(dist: md.Distribution) -> set[str]:
    """A distribution's top-level import names: top_level.txt where it ships one, and the first
    component of every importable path in its RECORD (wheels built without top_level.txt)."""
    names = set()
    top_level = dist.read_text("top_level.txt")
    if top_level:
        names |= {line.strip() for line in top_level.splitlines() if line.strip()}
    for file in dist.files or ():
        parts = file.parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".data")):
            continue
        if len(parts) == 1:
            if parts[0].endswith(".py"):
                names.add(parts[0][:-3])
            elif parts[0].endswith((".so", ".pyd")):
                names.add(parts[0].split(".")[0])
        elif file.suffix in (".py", ".so", ".pyd", ".pyi"):
            names.add(parts[0])
    return {n.split("/")[0] for n in names}


def collisions(ours: set[str], distributions) -> list[str]:
    found = []
    for dist in distributions:
        name = dist.metadata["Name"] or "?"
        if _normalized(name) == OWN_DISTRIBUTION:
            continue
        for module in sorted(ours & distribution_top_level(dist)):
            found.append(f"project package '{module}' ({ROOT / module}) is also the top-level module "
                         f"'{module}' of the installed distribution {name} {dist.version}")
    return found


def test_no_project_import_name_shadows_an_installed_distribution():
    ours = project_import_names()
    assert {"imd_hpc", "imd_kernels", "sweeps"} <= ours
    found = collisions(ours, md.distributions())
    assert not found, "\n".join(found)


def test_the_guard_reports_a_colliding_distribution(tmp_path):
    """A distribution that ships our kernel package's name, by top_level.txt and by RECORD alone."""
    by_top_level = tmp_path / "kernelhub-1.0.dist-info"
    by_top_level.mkdir()
    (by_top_level / "METADATA").write_text("Metadata-Version: 2.1\nName: kernelhub\nVersion: 1.0\n")
    (by_top_level / "top_level.txt").write_text("imd_kernels\n")
    by_record = tmp_path / "othersweeps-2.0.dist-info"
    by_record.mkdir()
    (by_record / "METADATA").write_text("Metadata-Version: 2.1\nName: othersweeps\nVersion: 2.0\n")
    (by_record / "RECORD").write_text("sweeps/__init__.py,,\nsweeps/core.py,,\n"
                                      "othersweeps-2.0.dist-info/METADATA,,\n")
    found = collisions(project_import_names(), md.distributions(path=[str(tmp_path)]))
    assert len(found) == 2
    assert any("'imd_kernels'" in f and "kernelhub 1.0" in f for f in found)
    assert any("'sweeps'" in f and "othersweeps 2.0" in f for f in found)


def test_the_old_name_would_have_been_caught(tmp_path):
    """Hugging Face's kernels distribution against a project package of that name."""
    dist = tmp_path / "kernels-0.19.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n")
    (dist / "RECORD").write_text("kernels/__init__.py,,\nkernels/utils.py,,\n")
    found = collisions({"kernels"}, md.distributions(path=[str(tmp_path)]))
    assert found and "kernels 0.19.1" in found[0]
