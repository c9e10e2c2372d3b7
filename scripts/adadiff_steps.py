"""Where AUTOMATIC1111 and Forge find AdaDiff: they import every ``scripts/*.py`` of an extension by file path.

The extension folder is itself the ``adadiff`` package, whose modules import each other relatively. It is loaded
here under a name that no other extension (and no pip-installed ``adadiff``) uses, whatever the folder is called,
and the two Script classes are bound in this module, where the webui looks for them.
"""
import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE_NAME = "adadiff_webui_extension"


def load_extension_package():
    """Import the extension folder as the package ``PACKAGE_NAME`` (once per webui process)."""
    if PACKAGE_NAME in sys.modules:
        return sys.modules[PACKAGE_NAME]
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(PACKAGE_NAME, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE_NAME] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[PACKAGE_NAME]
        raise
    return package


load_extension_package()
_script_module = importlib.import_module(f"{PACKAGE_NAME}.a1111_script.script")
AdaDiffAccordion = _script_module.AdaDiffAccordion
AdaDiffPerPromptScript = _script_module.AdaDiffPerPromptScript
