"""Config validation: every layer is checked against the types of the defaults and a few minimums,
with a message that names the key, the value, what was expected and where the value came from."""

from __future__ import annotations

import pytest

from diffkit.config import check_config, resolve_config
from toy_domain import ToyDomain

DOMAIN = ToyDomain()


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.lr=abc", "config key 'train.lr' expects a number (float), got 'abc' (str) from --set train.lr=abc"),
        ("train.steps=1e3", "config key 'train.steps' expects an integer (int), got 1000.0 (float) from --set train.steps=1e3"),
        ("train.compile=1", "config key 'train.compile' expects true or false (bool), got 1 (int) from --set train.compile=1"),
        ("train.lr=True", "config key 'train.lr' expects a number (float), got True (bool) from --set train.lr=True"),
        ("sample.sampler=3", "config key 'sample.sampler' expects a string (str), got 3 (int) from --set sample.sampler=3"),
        ("train.steps=-5", "config key 'train.steps' must be at least 1, got -5 from --set train.steps=-5"),
        ("train.batch_size=0", "config key 'train.batch_size' must be at least 1, got 0 from --set train.batch_size=0"),
        ("sample.steps=0", "config key 'sample.steps' must be at least 1, got 0 from --set sample.steps=0"),
    ],
)
def test_a_set_value_of_the_wrong_type_or_range_is_named_with_its_origin(assignment, message):
    with pytest.raises(ValueError) as caught:
        resolve_config(DOMAIN, sets=[assignment])
    assert str(caught.value) == message


def test_a_file_value_of_the_wrong_type_names_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[train]\nlr = "abc"\n')
    with pytest.raises(ValueError) as caught:
        resolve_config(DOMAIN, file=path)
    assert str(caught.value) == f"config key 'train.lr' expects a number (float), got 'abc' (str) from config file {str(path)!r}"


def test_options_are_checked_too():
    with pytest.raises(ValueError, match=r"^config key 'train\.steps' must be at least 1, got 0$"):
        resolve_config(DOMAIN, overrides={"train": {"steps": 0}})


def test_values_of_the_right_kind_pass():
    config = resolve_config(DOMAIN, sets=["train.lr=1", "train.compile=false", "sample.guidance=2"])
    assert (config["train"]["lr"], config["train"]["compile"], config["sample"]["guidance"]) == (1, False, 2)


def test_lists_are_checked_item_by_item_and_none_defaults_take_anything():
    defaults = {"model": {"mults": [1, 2, 2], "names": [], "extra": None}}
    check_config({"model": {"mults": [1, 4], "names": ["a", 3], "extra": {"any": "thing"}}}, defaults)
    with pytest.raises(ValueError, match=r"'model\.mults' expects a list whose items are each an integer \(int\), "
                                         r"got \[1, 'x'\] \(list\)"):
        check_config({"model": {"mults": [1, "x"]}}, defaults)
    with pytest.raises(ValueError, match=r"'model\.mults' expects a list, got 2 \(int\)"):
        check_config({"model": {"mults": 2}}, defaults)


def test_sample_options_is_a_free_table_even_where_a_saved_config_lacks_it():
    from diffkit.config import parse_assignment
    from diffkit.domain import merge_config

    saved = {"sample": {"steps": 5}}  # a config saved before sample.options existed
    update = parse_assignment("sample.options.eta=0.5", saved)
    assert merge_config(saved, update) == {"sample": {"steps": 5, "options": {"eta": 0.5}}}
    assert merge_config(merge_config(saved, update), {"sample": {"options": {"order": 2}}})["sample"]["options"] == {
        "eta": 0.5, "order": 2}
    # Other tables keep refusing keys they do not know.
    with pytest.raises(KeyError, match="unknown config key 'sample.option'"):
        parse_assignment("sample.option=1", saved)
    with pytest.raises(KeyError, match="unknown config key 'sample.opts'"):
        merge_config(saved, {"sample": {"opts": {"eta": 1}}})


class ToyWithOptions(ToyDomain):
    """The toy domain whose default sampler comes with an option (as the molecule domain's does)."""

    def default_config(self):
        config = super().default_config()
        config["sample"].update(sampler="ddim", options={"eta": 0.5})
        return config


@pytest.mark.parametrize("sets", [
    ["sample.sampler=ddpm"],
    ["sample.sampler=ddpm", "sample.steps=4"],
])
def test_choosing_another_sampler_drops_the_options_of_the_one_replaced(sets):
    assert resolve_config(ToyWithOptions(), sets=sets)["sample"]["options"] == {}
    assert resolve_config(ToyWithOptions(), sets=["sample.steps=4"])["sample"]["options"] == {"eta": 0.5}


@pytest.mark.parametrize("sets", [
    ["sample.sampler=dpmpp_2m_sde", "sample.options.eta=0.7"],
    ["sample.options.eta=0.7", "sample.sampler=dpmpp_2m_sde"],  # in either order
])
def test_options_given_with_another_sampler_stay(sets):
    assert resolve_config(ToyWithOptions(), sets=sets)["sample"]["options"] == {"eta": 0.7}


def test_a_saved_options_table_is_kept_whole_and_another_sampler_drops_it():
    from diffkit.config import fill_defaults, sampling_config

    domain = ToyWithOptions()
    saved = resolve_config(domain, sets=["sample.sampler=ddpm"])
    assert saved["sample"]["options"] == {}
    # The defaults' eta is not added back to the table the checkpoint saved.
    assert fill_defaults(domain, saved)["sample"]["options"] == {}
    assert sampling_config(domain, resolve_config(domain), sets=["sample.sampler=ddpm"])["sample"]["options"] == {}
