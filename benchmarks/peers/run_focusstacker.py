"""Run focusstacker (Python API only, no command line): ``run_focusstacker.py OUTPUT.jpg PLANE...``.

focusstacker reads and writes JPEG only and always aligns with SIFT; its defaults are used
(balanced Laplacian-pyramid blender, 5 levels). Runs in the benchmark environment.
"""

from __future__ import annotations

import sys

from focusstacker import stack_images

if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    stack_images(sys.argv[2:], sys.argv[1])
