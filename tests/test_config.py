import pytest

from tfdnadet.config import builtin_config_names, load_config, parse_settings
from tfdnadet.errors import TfdnadetError


def test_builtin_configs_load_with_their_sizes():
    assert {"paper", "cpu", "tiny"} <= set(builtin_config_names())
    paper = load_config("paper")
    assert (paper.data.base_size, paper.data.input_size, paper.data.patch_size, paper.data.patches_per_image) == (128, 512, 64, 16)
    assert paper.model.width == 1.0 and paper.train.learning_rate == pytest.approx(1e-4)
    assert load_config("tiny").model.width < load_config("cpu").model.width


def test_unknown_key_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  base_size: 64\n  patchsize: 32\n")
    with pytest.raises(TfdnadetError, match=r"data\.patchsize"):
        load_config(str(path))
    path.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(TfdnadetError, match=r"^Unknown config key 'trian'\. Known sections: data, model, train,"):
        load_config(str(path))


def test_overrides_and_validation():
    config = load_config("tiny", {"train.epochs": 7, "data.patch_size": 16, "model.width": None})
    assert config.train.epochs == 7 and config.data.patch_size == 16
    with pytest.raises(TfdnadetError, match="precision"):
        load_config("tiny", {"train.precision": "float8"})
    with pytest.raises(TfdnadetError, match="patch_size"):
        load_config("tiny", {"data.patch_size": 1000})
    with pytest.raises(TfdnadetError, match=r"data.max_base_size \(16\) must be at least data.base_size \(32\)"):
        load_config("tiny", {"data.max_base_size": 16})
    with pytest.raises(TfdnadetError, match="not found"):
        load_config("no-such-config")
    with pytest.raises(TfdnadetError, match=r"model.input_filter must be one of \('none', 'highpass'\). Received: 'sobel'"):
        load_config("tiny", {"model.input_filter": "sobel"})
    with pytest.raises(TfdnadetError, match="model.input_filter filters the DNA-Det encoder's input: model.backbone must be dnadet"):
        load_config("tiny", {"model.input_filter": "highpass", "model.backbone": "attnet"})


def test_values_of_the_wrong_type_are_errors_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    for text, message in (
        ("train:\n  epochs: 2.5\n", r"'train\.epochs' must be int\. Received: 2\.5"),
        ("train:\n  jit_compile: 1\n", r"'train\.jit_compile' must be bool"),
        ("train:\n  epochs: yes\n", r"'train\.epochs' must be int\. Received: True"),
        ("heads:\n  threshold_fpr: low\n", r"'heads\.threshold_fpr' must be float or null\. Received: 'low'"),
        ("data:\n  augment: 3\n", r"'data\.augment' must be list or str\. Received: 3"),
        ("data:\n  grid_scales: 2\n", r"'data\.grid_scales' must be list\. Received: 2"),
        ("stage1:\n  transforms: 3\n", r"'stage1\.transforms' must be dict or null\. Received: 3"),
    ):
        path.write_text(text)
        with pytest.raises(TfdnadetError, match=message):
            load_config(str(path))
    path.write_text("model:\n  width: 1\nheads:\n  threshold_fpr: null\n")  # an int where a float goes is fine
    config = load_config(str(path))
    assert config.model.width == 1 and config.heads.threshold_fpr is None


def test_set_null_overrides_a_value_and_none_means_not_given():
    assert load_config("tiny", parse_settings(["heads.threshold_fpr=null"])).heads.threshold_fpr is None
    assert load_config("tiny", {"heads.threshold_fpr": None}).heads.threshold_fpr == 0.0
    assert load_config("tiny", parse_settings(["heads.threshold_fpr=0.01"])).heads.threshold_fpr == 0.01
    with pytest.raises(TfdnadetError, match=r"heads\.threshold_fpr must be in \[0, 1\) or null"):
        load_config("tiny", {"heads.threshold_fpr": 1.5})
