"""ComfyUI nodes (V3 API): the AdaDiff Step Selector, the all-in-one AdaDiff KSampler and AdaDiff Calibrate.

Imported only inside ComfyUI (see the package root). The policy folder is registered here, at import time,
because ComfyUI 0.3.x never calls ``ComfyExtension.on_load``.
"""
from comfy_api.latest import ComfyExtension, io

from .calibrate import AdaDiffCalibrate
from .ksampler import AdaDiffKSampler
from .policy_folder import register_policy_folder
from .selector import AdaDiffStepSelector

register_policy_folder()


class AdaDiffExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [AdaDiffStepSelector, AdaDiffKSampler, AdaDiffCalibrate]


async def comfy_entrypoint() -> AdaDiffExtension:
    return AdaDiffExtension()
