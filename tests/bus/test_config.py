import pytest

from agentnas.bus.config import Config, ConfigError, config_to_toml, load_config, resolve_home


def test_defaults_are_the_papers_values():
    c = Config()
    assert (c.phase1.budget, c.phase1.patience, c.phase1.top_k_full, c.phase1.code_retries) == (160, 64, 8, 10)
    assert (c.proxy.fraction, c.proxy.time_cap_s, c.proxy.memory_cap_mb) == (0.3, 3600.0, 11264.0)
    assert (c.modularizer.retries, c.modularizer.rtol, c.modularizer.atol) == (5, 1e-5, 1e-6)
    assert (c.slots.max_slots, c.slots.max_alternatives) == (20, 8)
    assert c.slots.lr_multipliers == (0.25, 0.5, 1.0, 2.0, 4.0)
    e = c.evolution
    assert (e.population, e.init_single_mutations, e.init_double_mutations, e.init_random) == (16, 5, 5, 5)
    assert (e.tournament, e.p_single_mutation, e.generations, e.budget, e.patience) == (5, 0.5, 10, 160, 64)


def test_file_then_overrides(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text("[phase1]\nbudget = 20\npatience = 7\n[llm]\nmodel = 'x'\n")
    c = load_config(f, {"phase1.budget": 5, "llm.provider": None})
    assert (c.phase1.budget, c.phase1.patience, c.llm.model, c.llm.provider) == (5, 7, "x", "anthropic")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[phase1]\nbudgett = 3\n", "unknown key 'phase1.budgett'"),
        ("colour = 3\n", "unknown key 'colour'"),
        ("[phase1]\nbudget = 'many'\n", "phase1.budget: Expected `int`, got `str`"),
        ("[evolution]\nalgorithm = 'bayes'\n", "evolution.algorithm"),
        ("[slots]\nlr_multipliers = [1.0, 'x']\n", "slots.lr_multipliers[1]"),
        ("[phase1\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_field(tmp_path, text, expected):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    message = str(info.value)
    assert expected in message and str(f) in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_round_trip_through_toml(tmp_path):
    c = load_config(None, {"phase1.budget": 33})
    f = tmp_path / "c.toml"
    f.write_text(config_to_toml(c))
    assert load_config(f) == c


def test_home_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTNAS_HOME", str(tmp_path / "env"))
    assert resolve_home("", None) == tmp_path / "env"
    assert resolve_home(str(tmp_path / "cfg"), None) == tmp_path / "cfg"
    assert resolve_home(str(tmp_path / "cfg"), str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.delenv("AGENTNAS_HOME")
    assert resolve_home("", None).name == ".agentnas"


def test_enum_errors_list_the_values_and_flags_name_the_command_line(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[evolution]\nalgorithm = 'bayes'\n")
    with pytest.raises(ConfigError, match=r"bad.toml: evolution.algorithm: expected one of 'gdas', 're', 'rs', got 'bayes'$"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"^command line: log.format: expected one of 'auto', 'console', 'json', got 'xml'$"):
        load_config(None, {"log.format": "xml"})


def test_trainer_defaults_are_the_effective_values():
    assert Config().trainer.worker_jobs == 32  # what `config show` prints is what runs
    with pytest.raises(ConfigError, match="trainer.max_deliver: Expected `int` >= 1"):
        load_config(None, {"trainer.max_deliver": 0})
