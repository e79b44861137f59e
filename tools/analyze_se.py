"""tools/analyze_gates.py under its name from before ECA and CBAM: the same tool, the same arguments.

    .venv/bin/python tools/analyze_se.py -c configs/demo/se_resnet20_digits.yaml \\
        -o model.weights=output/demo/se_resnet20_digits
"""

import os
import runpy

if __name__ == "__main__":
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "analyze_gates.py"), run_name="__main__")
