"""ComfyUI nodes (V3 API): the AdaDiff Step Selector and the all-in-one AdaDiff KSampler.

Imported only inside ComfyUI (see the package root). The policy folder is registered here, at import time,
because ComfyUI 0.3.x never calls ``ComfyExtension.on_load``.
"""
from comfy_api.latest import ComfyExtension, io

from .ksampler import AdaDiffKSampler
from .policy_folder import register_policy_folder
from .selector import AdaDiffStepSelector

register_policy_folder()


class AdaDiffExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [AdaDiffStepSelector, AdaDiffKSampler]


async def comfy_entrypoint() -> AdaDiffExtension:
    return AdaDiffExtension()
