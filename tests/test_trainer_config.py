"""Settings: a TOML file mirrors the flags, flags win, and every bad value is named."""
import pytest

from adadiff.trainer.cli import build_parser
from adadiff.trainer.config import (FitSettings, GenerateSettings, JobSettings, TrainerInputError, build_settings,
                                    check_known_keys, read_config_file, setting_names)


def flags_of(argv):
    args = build_parser().parse_args(argv)
    return {k: v for k, v in vars(args).items() if k not in ("command", "config")}


def test_every_flag_has_a_toml_key_and_flags_win(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('model = "m"\noptions = [4, 8, 16]\nbatch-size = 3\nscheduler = "euler"\nseeds = "0,5"\n'
                      'top_k = 2\n[reward_settings]\nreference_steps = 6\n')
    from_file = read_config_file(config)
    flags = flags_of(["run", "--batch-size", "5", "--options", "2,3", "--top-k", "4"])
    generate = build_settings(GenerateSettings, from_file, flags)
    fit = build_settings(FitSettings, from_file, flags)
    assert generate.model == "m" and generate.scheduler == "euler" and generate.seeds == (0, 5)
    assert generate.batch_size == 5 and generate.options == (2, 3) and fit.top_k == 4
    assert generate.reward_settings == {"reference_steps": 6}
    assert build_settings(GenerateSettings, from_file, {}).options == (4, 8, 16)


def test_defaults_without_file_or_flags():
    settings = build_settings(GenerateSettings)
    assert settings.options == (5, 10, 15, 20, 25, 30, 35, 40, 45, 50) and settings.scheduler == "ddim"
    assert build_settings(JobSettings, flags_of(["fit", "--force"])).force is True


def test_unknown_config_key_is_refused_with_the_known_ones(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("batch_sise = 3\n")
    with pytest.raises(TrainerInputError, match=r"unknown setting\(s\) \['batch_sise'\].*batch_size"):
        check_known_keys(config, read_config_file(config), setting_names(GenerateSettings))


@pytest.mark.parametrize("settings_class, values, message", [
    (GenerateSettings, {"options": "10,5"}, "increasing order"),
    (GenerateSettings, {"options": "5"}, "at least two"),
    (GenerateSettings, {"options": "5,x"}, "--options: expected comma-separated whole numbers"),
    (GenerateSettings, {"seeds": "1,1"}, "--seeds must be distinct"),
    (GenerateSettings, {"batch_size": "0"}, "--batch-size must be at least 1"),
    (GenerateSettings, {"size": "30"}, "multiple of 8"),
    (GenerateSettings, {"guidance": "lots"}, "--guidance: cannot use 'lots'"),
    (FitSettings, {"baseline": "mean"}, "--baseline must be expected, batch or none"),
    (FitSettings, {"val_fraction": "1.5"}, "--val-fraction"),
    (FitSettings, {"top_k": "0"}, "--top-k must be at least 1"),
    (FitSettings, {"policy_width": "30"}, "--policy-width must be a positive multiple of 4"),
    (FitSettings, {"estimator": "guess"}, "--estimator must be exact or sampled"),
    (JobSettings, {"heldout_fraction": "0"}, "--heldout-fraction"),
    (JobSettings, {"force": "yes"}, "--force: expected true or false"),
])
def test_bad_values_name_the_flag(settings_class, values, message):
    with pytest.raises(TrainerInputError, match=message):
        build_settings(settings_class, values)


def test_bad_toml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("options = [5, \n")
    with pytest.raises(TrainerInputError, match="is not valid TOML"):
        read_config_file(broken)
    with pytest.raises(TrainerInputError, match="no such config file"):
        read_config_file(tmp_path / "none.toml")
