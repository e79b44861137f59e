"""A package, not a script (every scripts/*.py is one): the torch side of the fixture scripts
(make_weight_fixtures.py, make_mixup_fixtures.py, make_augment_fixtures.py), which run in a separate venv
with torch and timm, never the project's .venv.

torchvision's import fails on this machine: its wheel is a CUDA build whose C++ ops (torchvision::nms
and co.) are missing from the CPU torch. Its model code and transforms are pure Python, so the ops'
fake-kernel registrations are skipped while it is imported.
"""

import torch


def import_torchvision():
    """torchvision, imported with its C++ ops' fake-kernel registrations skipped (see the module docstring)."""
    register = torch.library.register_fake

    def lenient(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return lambda fn: fn
        return register(op, *args, **kwargs)

    torch.library.register_fake = lenient
    try:
        import torchvision
    finally:
        torch.library.register_fake = register
    return torchvision
