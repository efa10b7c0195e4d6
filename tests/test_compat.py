"""The torchvision compatibility step: shims only where torchvision's extension cannot load."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_petlprune_is_lazy_and_timm_works_after_it():
    out = _run(
        """
        import sys
        import petlprune
        assert "torch" not in sys.modules and "torchvision" not in sys.modules
        import timm, torch
        from petlprune._compat import COMPAT_STATE, torchvision_extension_loadable
        model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3)
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
        expected = "native" if torchvision_extension_loadable() else "shimmed"
        print(COMPAT_STATE["state"], expected)
        """
    )
    state, expected = out.split()
    assert state == expected


def test_shim_defines_the_schemas_when_the_extension_cannot_load():
    out = _run(
        """
        import petlprune._compat as c
        c.torchvision_extension_loadable = lambda: False
        import torch
        assert c.ensure_torchvision() == "shimmed"
        import torchvision.transforms  # the import that fails without the shim on a CPU torch
        print(hasattr(torch.ops.torchvision, "nms"))
        """
    )
    assert out == "True"


def test_step_does_nothing_where_the_extension_loads():
    out = _run(
        """
        import petlprune._compat as c
        c.torchvision_extension_loadable = lambda: True
        assert c.ensure_torchvision() == "native"
        print(c._LIBRARY is None)
        """
    )
    assert out == "True"
