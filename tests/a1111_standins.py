"""The narrowest stand-ins for the AUTOMATIC1111 names the AdaDiff extension touches, for tests where no webui runs.

Every name and signature below is taken from AUTOMATIC1111 stable-diffusion-webui v1.10.1 (commit 82a973c0), and only
the behaviour the extension depends on is reproduced:

* ``modules.scripts``: ``Script`` (title/ui/show/run/process/process_batch/elem_id and the ``infotext_fields``
  attribute), ``AlwaysVisible``, and how ``load_scripts`` imports ``extensions/<dir>/scripts/*.py`` (by file path,
  module named after the file, extension folder first on ``sys.path``, every ``Script`` subclass in the module's
  namespace registered); ``ScriptRunner`` slices ``p.script_args`` per script and *swallows* hook exceptions, as the
  real one does.
* ``modules.processing``: ``process_images`` keeps the real order (``setup_prompts`` applying the job's styles to
  every prompt; ``process`` once; then per batch the prompts slice, ``before_process_batch``, the ``<lora:...>``-style
  tags removed (``parse_extra_network_prompts``), ``process_batch(p, *args, batch_number, prompts, seeds,
  subseeds)``, ``setup_conds`` building the prompt-editing schedules for ``p.steps``, ``process_before_every_sampling``
  and sampling with ``p.steps``; for txt2img with hires fix a second pass of ``hr_second_pass_steps or steps``, for
  img2img ``setup_img2img_steps``' denoising steps; one infotext per image written from ``p.steps`` and
  ``p.extra_generation_params`` as ``create_infotext`` does), ``StableDiffusionProcessingTxt2Img`` /
  ``StableDiffusionProcessingImg2Img`` (the hires and img2img fields the order reads), ``Processed`` (constructor
  signature of v1.10.1), ``fix_seed``; ``modules.styles``' ``merge_prompts`` and ``extra_networks``' tag pattern.
* ``modules.infotext_utils``: ``quote``/``unquote`` and the key/value parsing of ``parse_generation_parameters``;
  ``paste_infotext`` is what the paste button does with it (``connect_paste``: parse, then the ``infotext_pasted``
  callbacks, then each paste field reads the parsed values).
* ``modules.script_callbacks.on_infotext_pasted``.
* ``modules.ui_loadsave``: how ``ui-config.json`` saves and restores component values (``save_ui_config`` /
  ``restore_ui_config``: every labelled component's value, except those marked ``do_not_save_to_config``; a restored
  dropdown value must be among its choices and is handed to the dropdown's ``init_field``).
* ``modules.shared.state``, ``opts.uni_pc_order`` and ``sd_model`` (with the ``is_sd1``/``is_sd2``/``is_sdxl``
  flags; a property that loads the checkpoint on first access, over ``modules.sd_models.model_data``, which does
  not), ``modules.devices.autocast``, ``modules.paths.models_path``, ``modules.ui_common.create_refresh_button``.
* ``gradio``: the webui's own gradio (3.41.2 on A1111, 4.40 on Forge) cannot be installed next to this project's
  test pins (it needs pillow < 11 and numpy 1.x), so the component classes the extension uses are stood in for
  with keyword parameters limited to those both gradio versions accept: an argument gradio 3 or 4 would reject fails
  here too. The real gradio is exercised by the real-webui test (tests/test_a1111_real.py).

Sampling is not simulated beyond recording the step count each image was sampled with: the image is that record.
The text encoder is a stand-in ``sd_model`` whose ``get_learned_conditioning`` returns real tensors of the shapes the
webui returns (``[B, 77, 768]`` for SD1.x, the ``{crossattn, vector}`` dict for SDXL), fixed per prompt text.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import os
import re
import sys
import types
import zlib
from dataclasses import dataclass, field

import torch

# --- gradio ------------------------------------------------------------------------------------------------------


class _Component:
    """Keeps what was passed and the event listeners, like a gradio Block does."""

    created: list["_Component"] = []

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
        self.listeners: dict[str, list] = {}
        for layout in _Layout.open_stack:
            layout.children.append(self)
        _Component.created.append(self)

    def change(self, fn=None, inputs=None, outputs=None, **kwargs):
        self.listeners.setdefault("change", []).append((fn, inputs, outputs))

    def click(self, fn=None, inputs=None, outputs=None, **kwargs):
        self.listeners.setdefault("click", []).append((fn, inputs, outputs))


class Checkbox(_Component):
    def __init__(self, value=False, *, label=None, info=None, interactive=None, visible=True, elem_id=None,
                 elem_classes=None):
        super().__init__(value=value, label=label, info=info, interactive=interactive, visible=visible,
                         elem_id=elem_id, elem_classes=elem_classes)


class Slider(_Component):
    def __init__(self, minimum=0, maximum=100, value=None, *, step=None, label=None, info=None, interactive=None,
                 visible=True, elem_id=None, elem_classes=None):
        super().__init__(minimum=minimum, maximum=maximum, value=minimum if value is None else value, step=step,
                         label=label, info=info, interactive=interactive, visible=visible, elem_id=elem_id,
                         elem_classes=elem_classes)


class Dropdown(_Component):
    def __init__(self, choices=None, *, value=None, type="value", multiselect=None, allow_custom_value=False,
                 label=None, info=None, interactive=None, visible=True, elem_id=None, elem_classes=None):
        super().__init__(choices=list(choices or []), value=value, type=type, multiselect=multiselect,
                         allow_custom_value=allow_custom_value, label=label, info=info, interactive=interactive,
                         visible=visible, elem_id=elem_id, elem_classes=elem_classes)


class Textbox(_Component):
    def __init__(self, value="", *, lines=1, max_lines=20, placeholder=None, label=None, info=None,
                 interactive=None, visible=True, elem_id=None, elem_classes=None):
        super().__init__(value=value, lines=lines, max_lines=max_lines, placeholder=placeholder, label=label,
                         info=info, interactive=interactive, visible=visible, elem_id=elem_id,
                         elem_classes=elem_classes)


class _Layout:
    """A context manager that collects the components created inside it (and inside its nested layouts)."""

    open_stack: list["_Layout"] = []
    created: list["_Layout"] = []

    def __init__(self):
        self.children: list = []
        _Layout.created.append(self)

    def __enter__(self):
        _Layout.open_stack.append(self)
        return self

    def __exit__(self, *exc):
        _Layout.open_stack.pop()
        return False


class _Accordion(_Layout):
    def __init__(self, label, *, open=True, visible=True, elem_id=None):
        super().__init__()
        self.label, self.open, self.visible, self.elem_id = label, open, visible, elem_id


class Row(_Layout):
    def __init__(self, *, visible=True, elem_id=None, elem_classes=None):
        super().__init__()
        self.visible, self.elem_id, self.elem_classes = visible, elem_id, elem_classes


def _update(**kwargs):
    return {"__type__": "update", **kwargs}


# --- modules.scripts ---------------------------------------------------------------------------------------------

AlwaysVisible = object()


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


class ScriptRunner:
    """``ScriptRunner`` reduced to what a job touches; ``errors`` collects what the real one prints and forgets."""

    def __init__(self):
        self.scripts, self.alwayson_scripts, self.selectable_scripts = [], [], []
        self.inputs = [None]
        self.infotext_fields = []
        self.errors: list[str] = []

    def initialize_scripts(self, script_classes, is_img2img):
        for script_class in script_classes:
            script = script_class()
            script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
            visibility = script.show(is_img2img)
            if visibility is AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def setup_ui(self):
        """What ``create_script_ui`` does for each script: controls become argument slots ``args_from:args_to``."""
        for script in self.alwayson_scripts + self.selectable_scripts:
            script.args_from = len(self.inputs)
            controls = script.ui(script.is_img2img)
            script.controls = controls
            script.name = script.title().lower()
            if script.infotext_fields is not None:
                self.infotext_fields += script.infotext_fields
            self.inputs += controls
            script.args_to = len(self.inputs)

    def default_args(self, selected: "Script | None" = None) -> list:
        """``init_default_script_args``: every control's default value, slot 0 the selected dropdown script."""
        args = [c.value for c in self.inputs[1:]]
        index = 0 if selected is None else self.selectable_scripts.index(selected) + 1
        return [index, *args]

    def script(self, title):
        return next(s for s in self.scripts if s.title().lower() == title.lower())

    def run(self, p, *args):
        script_index = args[0]
        if not script_index:
            return None
        script = self.selectable_scripts[script_index - 1]
        return script.run(p, *args[script.args_from:script.args_to])

    def _call(self, hook, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            try:
                getattr(script, hook)(p, *extra, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception as error:  # the webui prints "*** Error running process_batch: ..." and goes on
                self.errors.append(f"Error running {hook}: {script.filename}: {error!r}")

    def process(self, p):
        self._call("process", p)

    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._call("process_before_every_sampling", p, **kwargs)


def load_scripts(path: str) -> list[type]:
    """``modules.scripts.load_scripts`` for one extension script file: the Script classes it registers."""
    basedir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    syspath = sys.path
    try:
        sys.path = [basedir] + sys.path
        spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path = syspath
    return [value for value in module.__dict__.values() if inspect.isclass(value) and issubclass(value, Script)]


# --- modules.infotext_utils --------------------------------------------------------------------------------------

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict:
    """The key/value part of ``parse_generation_parameters`` (styles and size splitting left out)."""
    *lines, lastline = x.strip().split("\n")
    res = {}
    for k, v in re_param.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        res[k] = v
    res["Prompt"] = "\n".join(lines)
    return res


infotext_pasted_callbacks: list = []


def on_infotext_pasted(callback, *, name=None):
    infotext_pasted_callbacks.append(callback)


def paste_infotext(text: str, paste_fields: list[tuple]) -> list:
    """What the paste button does (``connect_paste``): the value each paste field gets, None where it is left alone.

    A field is ``(component, key)``, the key an infotext label or a function of the parsed values; the webui's own
    ``(steps slider, "Steps")`` field is one of them.
    """
    params = parse_generation_parameters(text)
    for callback in infotext_pasted_callbacks:
        callback(text, params)
    return [key(params) if callable(key) else params.get(key) for _, key in paste_fields]


# --- modules.ui_loadsave -----------------------------------------------------------------------------------------


def save_ui_config() -> dict:
    """What ``ui-config.json`` holds after a start: each labelled component's value, by label."""
    return {c.label: c.value for c in _Component.created
            if getattr(c, "label", None) and not getattr(c, "do_not_save_to_config", False)}


def restore_ui_config(config: dict) -> None:
    """What the webui does with ``ui-config.json`` once the UI is built (``UiLoadsave.add_component``)."""
    for component in _Component.created:
        saved = config.get(getattr(component, "label", None))
        if saved is None or getattr(component, "do_not_save_to_config", False):
            continue
        if isinstance(component, Dropdown):
            if saved not in component.choices:
                continue
            component.value = saved
            if getattr(component, "init_field", None) is not None:
                component.init_field(saved)
        else:
            component.value = saved


# --- modules.processing ------------------------------------------------------------------------------------------


@dataclass
class SampledImage:
    """Stands for an image: what it was sampled from."""

    prompt: str
    seed: int
    steps: int  # the first pass's sampling steps (img2img: the schedule's length)
    conditioning_steps: int | None = None  # the steps setup_conds built the prompt-editing schedules for
    hires_steps: int | None = None  # the hires fix pass's steps (txt2img with enable_hr)
    denoising_steps: int | None = None  # img2img: the steps actually denoised (t_enc)


@dataclass
class StableDiffusionProcessing:
    """The fields of ``StableDiffusionProcessing`` a job's hooks read or write."""

    sd_model: object = None
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    steps: int = 50
    sampler_name: str = "Euler"
    styles: list = None
    n_iter: int = 1
    batch_size: int = 1
    do_not_save_grid: bool = False
    extra_generation_params: dict = None
    scripts: ScriptRunner = None
    script_args: list = None
    comments: dict = None
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)

    def __post_init__(self):
        self.comments = {}
        self.extra_generation_params = self.extra_generation_params or {}
        self.styles = self.styles or []

    def comment(self, text):
        self.comments[text] = 1


@dataclass
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    hr_second_pass_steps: int = 0
    hr_sampler_name: str = None


@dataclass
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    denoising_strength: float = 0.75


# --- modules.styles, modules.extra_networks ------------------------------------------------------------------------


def merge_prompts(style_prompt: str, prompt: str) -> str:
    if "{prompt}" in style_prompt:
        res = style_prompt.replace("{prompt}", prompt)
    else:
        parts = filter(None, (prompt.strip(), style_prompt.strip()))
        res = ", ".join(parts)
    return res


class StyleDatabase:
    """``shared.prompt_styles``: style name -> its prompt text."""

    def __init__(self):
        self.styles: dict[str, str] = {}

    def apply_styles_to_prompt(self, prompt, styles):
        for style in styles:
            prompt = merge_prompts(self.styles.get(style, ""), prompt)
        return prompt


re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def parse_prompts(prompts):
    """``extra_networks.parse_prompts`` without the networks' data: every tag removed from every prompt."""
    return [re.sub(re_extra_net, "", prompt) for prompt in prompts]


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.prompt = p.prompt
        self.seed = seed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.steps = p.steps
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [p.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [subseed]
        self.infotexts = infotexts or [info] * len(images_list)


def get_fixed_seed(seed):
    if seed == "" or seed is None:
        seed = -1
    return 1234567 if seed == -1 else seed  # the webui draws a random seed; fixed here so tests are repeatable


def fix_seed(p):
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


def create_infotext(p, iteration, position_in_batch):
    index = position_in_batch + iteration * p.batch_size  # the prompt as styled, tags kept, as the webui writes it
    generation_params = {"Steps": p.steps, "Seed": p.all_seeds[index], **p.extra_generation_params}
    text = ", ".join(f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None)
    return f"{p.all_prompts[index]}\n{text}"


def setup_img2img_steps(p):
    """``sd_samplers_common.setup_img2img_steps`` with the default ``img2img_fix_steps`` off and no steps given."""
    steps = p.steps
    t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def process_images(p) -> Processed:
    seed = get_fixed_seed(p.seed)
    prompts = p.prompt if isinstance(p.prompt, list) else p.batch_size * p.n_iter * [p.prompt]
    prompts = [shared.prompt_styles.apply_styles_to_prompt(x, p.styles) for x in prompts]
    p.all_prompts = prompts
    p.all_negative_prompts = len(prompts) * [p.negative_prompt]
    p.all_seeds = [int(seed) + x for x in range(len(prompts))]
    p.all_subseeds = [int(get_fixed_seed(p.subseed)) + x for x in range(len(prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    output_images, infotexts = [], []
    for n in range(p.n_iter):
        if state.interrupted:
            break
        p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
        p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
        p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        if len(p.prompts) == 0:
            break
        p.prompts = parse_prompts(p.prompts)
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        conditioning_steps = p.steps  # setup_conds: prompt_parser's schedules for [a:b:when] are built for p.steps
        if p.scripts is not None:
            p.scripts.process_before_every_sampling(p, x=None, noise=None, c=None, uc=None)
        denoising_steps = setup_img2img_steps(p)[1] if isinstance(p, StableDiffusionProcessingImg2Img) else None
        sampled_steps = p.steps
        hires_steps = None
        if getattr(p, "enable_hr", False):
            if p.scripts is not None:
                p.scripts.process_before_every_sampling(p, x=None, noise=None, c=None, uc=None)
            hires_steps = p.hr_second_pass_steps or p.steps
        for i, prompt in enumerate(p.prompts):
            output_images.append(SampledImage(prompt, p.seeds[i], sampled_steps, conditioning_steps, hires_steps,
                                              denoising_steps))
            infotexts.append(create_infotext(p, n, i))
    return Processed(p, output_images, p.all_seeds[0], infotexts[0] if infotexts else "",
                     subseed=p.all_subseeds[0], infotexts=infotexts)


# --- modules.shared, devices, ui_common ---------------------------------------------------------------------------


@dataclass
class State:
    job_count: int = -1
    interrupted: bool = False


state = State()


@dataclass
class Options:
    uni_pc_order: int = 3


opts = Options()


def autocast(disable=False):
    return contextlib.nullcontext()


refresh_buttons: list = []  # every button create_refresh_button made, newest last


def create_refresh_button(refresh_component, refresh_method, refreshed_args, elem_id):
    def refresh():
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        for k, v in args.items():
            setattr(refresh_component, k, v)
        return _update(**(args or {}))

    button = _Component(value="\U0001f504", elem_id=elem_id)
    button.click(fn=refresh, inputs=[], outputs=[refresh_component])
    refresh_buttons.append(button)
    return button


# --- the text encoder --------------------------------------------------------------------------------------------


class StandInModel:
    """``shared.sd_model`` reduced to ``get_learned_conditioning``: a fixed random tensor per prompt text."""

    def __init__(self, family: str = "sd15"):
        self.family = family
        self.is_sd1, self.is_sd2, self.is_sdxl = family == "sd15", False, family == "sdxl"
        self.encoded: list[list[str]] = []

    def get_learned_conditioning(self, prompts):
        self.encoded.append(list(prompts))
        if self.family == "sd15":
            return torch.stack([prompt_states(prompt) for prompt in prompts])
        crossattn = torch.stack([prompt_states(prompt, width=2048) for prompt in prompts])
        vector = torch.stack([prompt_states(prompt, tokens=1, width=2816)[0] for prompt in prompts])
        return {"crossattn": crossattn, "vector": vector}


class SdModelData:
    """``modules.sd_models.model_data``: ``shared.sd_model`` reads it through ``get_sd_model``, which loads the
    checkpoint when none was loaded yet (minutes on a real webui; ``--skip-load-model-at-start`` defers that load to
    the first job). ``loads`` counts those loads."""

    def __init__(self):
        self.sd_model = None
        self.was_loaded_at_least_once = False
        self.loads = 0

    def get_sd_model(self):
        if self.sd_model is None and not self.was_loaded_at_least_once:
            self.loads += 1
            self.sd_model, self.was_loaded_at_least_once = StandInModel(), True
        return self.sd_model

    def set_sd_model(self, value):
        self.sd_model = value


class _Shared(types.ModuleType):
    """``modules.shared``'s class (``shared_items.Shared``): ``sd_model`` is a property over ``model_data``."""

    @property
    def sd_model(self):
        return sys.modules["modules.sd_models"].model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        sys.modules["modules.sd_models"].model_data.set_sd_model(value)


def prompt_states(prompt: str, tokens: int = 77, width: int = 768) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode("utf-8")))
    return torch.randn(tokens, width, generator=generator)


# --- installing them ---------------------------------------------------------------------------------------------


def _module(name: str, **names) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(names)
    return module


shared = _module("modules.shared", state=state, opts=opts, prompt_styles=StyleDatabase())
shared.__class__ = _Shared  # sd_model: the loaded checkpoint, through modules.sd_models.model_data
sd_models = _module("modules.sd_models", model_data=SdModelData())


def standin_modules(models_path: str) -> dict[str, types.ModuleType]:
    """Fresh stand-in modules by import name, ready for ``monkeypatch.setitem(sys.modules, ...)``."""
    state.job_count, state.interrupted = -1, False
    sd_models.model_data = SdModelData()  # no checkpoint loaded yet
    shared.prompt_styles = StyleDatabase()
    refresh_buttons.clear()
    infotext_pasted_callbacks.clear()
    _Layout.created.clear()
    _Component.created.clear()
    modules = _module("modules", __path__=[])
    submodules = {
        "scripts": _module("modules.scripts", Script=Script, AlwaysVisible=AlwaysVisible, ScriptRunner=ScriptRunner),
        "processing": _module("modules.processing", process_images=process_images, Processed=Processed,
                              fix_seed=fix_seed, StableDiffusionProcessing=StableDiffusionProcessing,
                              StableDiffusionProcessingTxt2Img=StableDiffusionProcessingTxt2Img,
                              StableDiffusionProcessingImg2Img=StableDiffusionProcessingImg2Img),
        "infotext_utils": _module("modules.infotext_utils", quote=quote, unquote=unquote,
                                  parse_generation_parameters=parse_generation_parameters),
        "shared": shared,
        "sd_models": sd_models,
        "script_callbacks": _module("modules.script_callbacks", on_infotext_pasted=on_infotext_pasted),
        "devices": _module("modules.devices", autocast=autocast),
        "paths": _module("modules.paths", models_path=models_path),
        "ui_common": _module("modules.ui_common", create_refresh_button=create_refresh_button),
    }
    result = {"modules": modules}
    for short, module in submodules.items():
        setattr(modules, short, module)
        result[f"modules.{short}"] = module
    result["gradio"] = _module("gradio", Checkbox=Checkbox, Slider=Slider, Dropdown=Dropdown, Textbox=Textbox,
                               Accordion=_Accordion, Row=Row, update=_update)
    return result
