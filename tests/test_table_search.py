"""The affordable table: the reference image reused as its own option, and the bisecting search that renders only
the options it needs, recording which values were measured and which inferred."""
import pytest
import torch

from adadiff.trainer.config import GenerateSettings, TrainerInputError
from adadiff.trainer.generate import generate_table, interpolate_unmeasured, sample
from adadiff.trainer.table import TableFolder, load_table
from trainer_fixtures import PROMPTS, Brightness, ClosenessToReference, load_tiny_model

OPTIONS = (1, 2, 3, 4, 5, 6)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def settings(**changes):
    values = dict(options=OPTIONS, seeds=(0, 1), batch_size=4, guidance=2.0, device="cpu")
    return GenerateSettings(**{**values, **changes})


class Converging(ClosenessToReference):
    """Closeness to the reference, saturating at ``converged_at`` like the convergence reward; counts renderings."""

    name = "converging"

    def __init__(self, converged_at: float, stop_after: int | None = None):
        super().__init__(reference_steps=OPTIONS[-1])
        self.converged_at, self.stop_after, self.images = converged_at, stop_after, 0

    def score(self, images, prompts, references=None):
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        self.images += len(prompts)
        result = super().score(images, prompts, references)
        result["closeness"] = result["iqs"]
        result["iqs"] = result["iqs"].clamp(max=self.converged_at)
        return result


@pytest.fixture(scope="module")
def tables(model, tmp_path_factory):
    """(full table, bisected table, the cap, the bisecting scorer): the cap, the median closeness of the 3-step
    images, puts the first converged option in mid-curve for many rows."""
    pipe, info = model
    folder = tmp_path_factory.mktemp("tables")
    three, _ = sample(pipe, PROMPTS, 0, 3, settings())
    six, _ = sample(pipe, PROMPTS, 0, 6, settings())
    cap = (1 - (three - six).abs().mean((1, 2, 3))).median().item()
    generate_table(pipe, PROMPTS, Converging(cap), settings(), folder / "full", model=info, show_progress=False)
    bisecting = Converging(cap)
    generate_table(pipe, PROMPTS, bisecting, settings(search="bisect"), folder / "bisect", model=info,
                   show_progress=False)
    return load_table(folder / "full"), load_table(folder / "bisect"), cap, bisecting


def _first_converged(iqs: torch.Tensor, cap: float) -> torch.Tensor:
    return (iqs >= cap).double().argmax(-1)


def test_the_option_at_the_reference_count_is_the_reference_rendered_once(model):
    pipe, _ = model
    table_settings = settings(seeds=(0,))
    reference, _ = sample(pipe, PROMPTS[:4], 0, 6, table_settings)
    again, _ = sample(pipe, PROMPTS[:4], 0, 6, table_settings)
    assert torch.equal(reference, again)  # so scoring the reference as the 6-step option changes no number


def test_bisection_renders_fewer_images_and_measured_values_equal_the_full_tables(tables):
    full, bisected, cap, bisecting = tables
    measured = bisected.measured
    assert full.measured is None and measured.dtype == torch.bool and measured.shape == full.iqs.shape
    assert measured[:, :, 0].all() and measured[:, :, -1].all()  # the curve's two ends are always rendered
    assert 0 < measured.sum() < measured.numel()
    # every (prompt, seed) renders the fewest option and the reference (= largest option) plus its probes
    assert bisecting.images == measured.sum().item()
    torch.testing.assert_close(bisected.iqs[measured], full.iqs[measured], atol=1e-5, rtol=0)
    torch.testing.assert_close(bisected.components["closeness"][measured], full.components["closeness"][measured],
                               atol=1e-5, rtol=0)


def test_bisection_finds_the_first_converged_option_wherever_the_curve_is_monotone(tables):
    full, bisected, cap, _ = tables
    raw = full.components["closeness"]
    monotone = (raw[..., 1:] >= raw[..., :-1]).all(-1)
    inside = (_first_converged(full.iqs, cap) > 0) & monotone
    assert inside.sum() >= 3  # the check below is not vacuous
    assert torch.equal(_first_converged(bisected.iqs, cap)[monotone], _first_converged(full.iqs, cap)[monotone])


def test_inferred_values_lie_between_their_measured_neighbours():
    values = torch.tensor([[0.2, float("nan"), float("nan"), 0.8, float("nan"), 1.0]])
    measured = ~values.isnan()
    filled = interpolate_unmeasured(values, measured, torch.tensor([1.0, 2, 3, 4, 5, 6]))
    torch.testing.assert_close(filled, torch.tensor([[0.2, 0.4, 0.6, 0.8, 0.9, 1.0]]))


def test_a_killed_bisection_resumes_from_its_probes_and_matches(model, tables, tmp_path):
    pipe, info = model
    _, bisected, cap, bisecting = tables
    with pytest.raises(KeyboardInterrupt):
        generate_table(pipe, PROMPTS, Converging(cap, stop_after=3), settings(search="bisect"), tmp_path / "t",
                       model=info, show_progress=False)
    folder = TableFolder(tmp_path / "t")
    assert any(folder.units.glob("*-probe.safetensors"))
    rest = Converging(cap)
    generate_table(pipe, PROMPTS, rest, settings(search="bisect"), tmp_path / "t", model=info, show_progress=False)
    assert rest.calls == bisecting.calls - 3  # no rendering scored before the kill was scored again
    resumed = load_table(tmp_path / "t")
    assert torch.equal(resumed.measured, bisected.measured)
    torch.testing.assert_close(resumed.iqs, bisected.iqs, atol=1e-5, rtol=0)
    assert not any(folder.units.glob("*-probe.safetensors")) and not any(folder.units.glob("*-ref.safetensors"))


def test_bisection_needs_a_saturating_reward(model, tmp_path):
    pipe, info = model
    with pytest.raises(TrainerInputError, match="--search bisect needs a reward whose IQS saturates"):
        generate_table(pipe, PROMPTS, Brightness(), settings(search="bisect"), tmp_path / "t", model=info,
                       show_progress=False)
    with pytest.raises(TrainerInputError, match="--search must be one of full, bisect"):
        settings(search="binary")
