"""A test-only ComfyUI node pack, installed next to AdaDiff in the test server's custom_nodes/.

No built-in node makes an empty CONDITIONING list, yet one can reach a sampler (e.g. from another pack); this node
makes one so the tests can check that AdaDiff reports it as a node error.
"""


class AdaDiffTestEmptyConditioning:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        return ([],)


NODE_CLASS_MAPPINGS = {"AdaDiffTestEmptyConditioning": AdaDiffTestEmptyConditioning}
