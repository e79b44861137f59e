"""senet: ResNets with and without Squeeze-and-Excitation in PaddlePaddle (see README.md)."""

import os as _os
import sys as _sys

# OpenCV reads its decoder pixel cap once, when cv2 loads, and Paddle loads cv2 on import: set it
# here, before any senet module imports either (senet.data.decode.MAX_PIXELS, 64 Mi pixels).
OPENCV_CAP_SET = "cv2" not in _sys.modules or "OPENCV_IO_MAX_IMAGE_PIXELS" in _os.environ
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 26))

# Paddle's known start-up warnings (ccache at import, BatchNorm's "always track" notice) are dropped
# from here on, before any senet module imports paddle: see senet.runtime.quiet_paddle.
from senet.runtime import quiet_paddle as _quiet_paddle  # noqa: E402

_quiet_paddle()
