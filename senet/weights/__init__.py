"""Weights from other frameworks, converted exactly, and ours written back out in timm's layout.

- senet.weights.torchfile: torch .pth state dicts read without torch or running their pickle.
- senet.weights.convert:   timm / torchvision / PaddleClas key layouts, the architecture they imply,
                           strict tensor accounting, OUT_DIR written atomically; `--to timm` export.
- senet.weights.synthetic: seeded weights and inputs (numpy only) for the equivalence fixtures.
See docs/weights.md.
"""
