"""Everything is declared in setup.cfg; this file only ships domainbed_itl_autoregister.pth.

That .pth goes to the top of site-packages, beside the packages, so every interpreter of the
environment installs the hook that registers ERM_ITL, RSC_ITL, ... into a clone of the public
DomainBed (see domainbed_itl/public_hook.py). A regular build copies it into the build tree,
which the wheel is made from; an editable build (`pip install -e .`) does not use that tree,
so the file is added to the editable wheel, RECORD line included.
"""

import base64
import hashlib
import zipfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "domainbed_itl_autoregister.pth"
PTH_SOURCE = Path(__file__).resolve().parent / PTH


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(str(PTH_SOURCE), str(Path(self.build_lib) / PTH), preserve_mode=False)


def add_to_wheel(wheel: Path, name: str, data: bytes) -> None:
    """Rewrite `wheel` with one more top-level file and its line in RECORD."""
    with zipfile.ZipFile(wheel) as old:
        entries = [(info, old.read(info)) for info in old.infolist()]
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record = next(i for i, (info, _) in enumerate(entries)
                  if info.filename.endswith(".dist-info/RECORD"))
    record_info, record_text = entries.pop(record)
    record_text += f"{name},sha256={digest},{len(data)}\n".encode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as new:
        for info, content in entries:
            if info.filename != name:
                new.writestr(info, content)
        new.writestr(name, data)
        new.writestr(record_info, record_text)


class EditableWheelWithPth(editable_wheel):
    def _create_wheel_file(self, bdist_wheel):
        wheel = super()._create_wheel_file(bdist_wheel)
        add_to_wheel(Path(wheel), PTH, PTH_SOURCE.read_bytes())
        return wheel


if not hasattr(editable_wheel, "_create_wheel_file"):
    raise RuntimeError("editable installs of domainbed-itl need setuptools' "
                       "editable_wheel._create_wheel_file (setuptools 64 to 84 have it)")

setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
