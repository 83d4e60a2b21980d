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


# -- limits: every number finite, every count and rate in its range, named before any work ---------

def built_in_domains():
    from diffkit.plugins import make_plugin_manager

    return make_plugin_manager(entry_points=False).domains


@pytest.mark.parametrize(
    ("domain", "assignment", "message"),
    [
        ("toy", "train.checkpoint_every=-1", "config key 'train.checkpoint_every' must be at least 0, got -1"),
        ("toy", "train.lr=-1", "config key 'train.lr' must be at least 0, got -1"),
        ("toy", "train.ema_decay=1.5", "config key 'train.ema_decay' must be in [0, 1], got 1.5"),
        ("toy", "sample.guidance=nan", "config key 'sample.guidance' must be a finite number, got nan"),
        ("toy", "sample.guidance=1e999", "config key 'sample.guidance' must be a finite number, got inf"),
        ("toy", "sample.guidance=-inf", "config key 'sample.guidance' must be a finite number, got -inf"),
        ("image", "model.base_channels=0", "config key 'model.base_channels' must be at least 1, got 0"),
        ("image", "model.channel_mults=[1,0]",
         "config key 'model.channel_mults' must be a list of numbers each at least 1, got [1, 0]"),
        ("image", "model.dropout=1.0", "config key 'model.dropout' must be in [0, 1), got 1.0"),
        ("audio", "data.duration=-1", "config key 'data.duration' must be at least 0, got -1"),
        ("molecule", "model.property_drop=2", "config key 'model.property_drop' must be in [0, 1], got 2"),
    ],
)
def test_a_value_outside_its_limit_is_refused_with_its_key(domain, assignment, message):
    domains = {"toy": DOMAIN, **built_in_domains()}
    with pytest.raises(ValueError) as caught:
        resolve_config(domains[domain], sets=[assignment])
    assert str(caught.value) == f"{message} from --set {assignment}"


def test_non_finite_numbers_of_a_file_are_refused_naming_the_file(tmp_path):
    from diffkit.config import sampling_config

    path = tmp_path / "run.toml"
    path.write_text("[sample]\nguidance = nan\n")
    expected = f"config key 'sample.guidance' must be a finite number, got nan from config file {str(path)!r}"
    for resolve in (lambda: resolve_config(DOMAIN, file=path),
                    lambda: sampling_config(DOMAIN, resolve_config(DOMAIN), file=path)):
        with pytest.raises(ValueError) as caught:
            resolve()
        assert str(caught.value) == expected


def test_limits_include_their_bounds_or_not_as_declared():
    from diffkit.config import FINITE, Limit

    closed, open_both = Limit(0, 1), Limit(0, 1, low_open=True, high_open=True)
    assert [closed.admits(v) for v in (-0.1, 0, 0.5, 1, 1.1)] == [False, True, True, True, False]
    assert [open_both.admits(v) for v in (0, 1e-9, 1 - 1e-9, 1)] == [False, True, True, False]
    assert [FINITE.admits(v) for v in (-1e308, 0, float("nan"), float("inf"))] == [True, True, False, False]
    assert (str(closed), str(open_both), str(Limit(1)), str(Limit(0, low_open=True)), str(FINITE)) == (
        "in [0, 1]", "in (0, 1)", "at least 1", "greater than 0", "a finite number")


def _numeric_settings(config, prefix=""):
    """The dotted keys of the numbers and lists of numbers of a config (the free tables aside)."""
    from diffkit.domain import FREE_TABLES

    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            if path not in FREE_TABLES:
                yield from _numeric_settings(value, path + ".")
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value) and value:
            yield path
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path


@pytest.mark.parametrize("name", ["image", "audio", "molecule"])
def test_every_numeric_setting_of_a_built_in_domain_has_a_limit_its_defaults_and_presets_keep(name):
    from diffkit.config import default_config, limits_of, preset_config

    domain = built_in_domains()[name]
    limits, defaults = limits_of(domain), default_config(domain)
    missing = [key for key in _numeric_settings(defaults) if key not in limits]
    assert not missing, f"the {name} domain declares no limit for {missing}"
    unknown = [key for key in limits if lookup_or_missing(defaults, key)]
    assert not unknown, f"limits name settings that do not exist: {unknown}"
    check_config(defaults, defaults, limits=limits)
    for preset in domain.presets():
        check_config(preset_config(domain, preset), defaults, limits=limits)


def lookup_or_missing(config, dotted):
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return True
        config = config[key]
    return False


class MislimitedToy(ToyDomain):
    """Limits naming a setting that does not exist, and a preset outside a limit."""

    def limits(self):
        from diffkit.config import at_least

        return {"model.hiden": at_least(1), "model.hidden": at_least(8)}

    def presets(self):
        return {**super().presets(), "tiny": {"model": {"hidden": 4}}}


def test_the_conformance_kit_checks_the_limits_against_the_defaults_and_presets(tmp_path):
    from diffkit.testing import check_domain

    problems = check_domain(MislimitedToy(), tmp_path, train_steps=2)
    assert "limits() names 'model.hiden', which default_config() lacks" in problems
    assert "preset 'tiny': config key 'model.hidden' must be at least 8, got 4" in problems
    assert check_domain(ToyDomain(), tmp_path / "b", train_steps=2) == []
