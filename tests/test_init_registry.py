"""The init registry: every module of medtransfer.init.plans registered with its traits, read torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medtransfer.init import origins, plans, registry
from medtransfer.registry import UnknownNameError


def test_the_registry_and_the_package_face_do_not_import_torch():
    code = ("import sys; import medtransfer.init.registry; import medtransfer.init; "
            "from medtransfer.init import INITS; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_the_traits_say_what_each_published_init_needs():
    """Raghu et al.'s and Matsoukas et al.'s inits: transfers name a source, partial ones take k;
    the planner reads exactly these tables (in this order: its error messages list them)."""
    assert registry.INITS_WITH_SOURCE == ("WT", "ST", "WT-ST", "WT-RI")
    assert registry.INITS_WITHOUT_SOURCE == ("RI", "Gabor")
    assert registry.INITS_WITH_K == ("WT-ST", "WT-RI")
    assert registry.INIT_OPTIONS == ("k", "slim", "architectures")


@pytest.mark.parametrize("name", registry.LISTED)
@pytest.mark.parametrize("k", [0, 2, 4])
def test_a_plan_gives_every_body_block_one_origin_that_apply_can_fill(name, k):
    body = ["stem", "block1", "block2", "block3"]
    plan = registry.INITS.get(name)(body, k if registry.takes_k(name) else None)
    assert len(plan) == len(body)
    assert set(plan) <= set(origins.ORIGINS) - {"new_head"}  # the head's origin is apply's
    if registry.takes_k(name):
        assert plan[:k] == ["source"] * min(k, len(body))


def test_an_unknown_name_lists_the_allowed_ones():
    with pytest.raises(UnknownNameError, match="allowed: Gabor, RI, ST, WT, WT-RI, WT-ST"):
        registry.needs_source("XX")


def test_a_new_init_is_one_file(tmp_path, monkeypatch):
    (tmp_path / "half.py").write_text(
        "from medtransfer.init.traits import Init\n"
        "def plan(blocks, k):\n"
        "    return ['source'] * (len(blocks) // 2) + ['random'] * (len(blocks) - len(blocks) // 2)\n"
        "INIT = Init('HALF', plan, order=7, source='required')\n"
    )
    monkeypatch.setattr(plans, "__path__", [*plans.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, f"{plans.__name__}.half", raising=False)
    found = registry._discover()
    assert "HALF" in found and found.get("HALF").needs_source
    assert found.get("HALF")(["a", "b", "c"], None) == ["source", "random", "random"]
    sys.modules.pop(f"{plans.__name__}.half", None)
