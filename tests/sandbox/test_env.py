"""The child's environment: an allow-list; secrets never pass, even when a caller asks."""

from __future__ import annotations

from agentnas.sandbox.env import THREAD_VARIABLES, child_env, looks_secret

FAKE_KEY = "placeholder-secret-for-sandbox-tests"
PARENT = {
    "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": "/root",
    "PYTHONPATH": "/src", "ANTHROPIC_API_KEY": FAKE_KEY, "OPENAI_API_KEY": "x", "AWS_SECRET_ACCESS_KEY": "x",
    "NATS_URL": "nats://secret", "GITHUB_TOKEN": "x", "DB_PASSWORD": "x", "LC_SECRET": "x", "OTHER": "x",
    "MY_CREDENTIALS_FILE": "x",
}


def test_only_the_allow_list_passes_and_the_rest_is_set(tmp_path):
    env = child_env(PARENT, scratch=tmp_path, threads=3)
    assert {k: env[k] for k in ("PATH", "LANG", "LC_ALL", "TZ")} == {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert all(env[name] == "3" for name in THREAD_VARIABLES) and env["MALLOC_ARENA_MAX"] == "2"
    assert set(env) == {"PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "MALLOC_ARENA_MAX", *THREAD_VARIABLES}
    assert FAKE_KEY not in str(env)


def test_callers_add_names_and_settings_but_never_a_secret(tmp_path):
    env = child_env(PARENT, scratch=tmp_path, threads=1, passed=("PYTHONPATH", "ANTHROPIC_API_KEY", "NATS_URL",
                                                                 "MISSING"),
                    extra={"AGENTNAS_DATA": "/data", "OMP_NUM_THREADS": "4"})
    assert env["PYTHONPATH"] == "/src" and env["AGENTNAS_DATA"] == "/data"
    assert env["OMP_NUM_THREADS"] == "4"  # extra comes last: a caller's setting wins
    assert not {"ANTHROPIC_API_KEY", "NATS_URL", "MISSING", "OTHER", "HOME_ORIG"} & set(env)
    assert FAKE_KEY not in str(env)


def test_secret_markers_match_any_case_anywhere_in_the_name():
    for name in ("ANTHROPIC_API_KEY", "openai_base", "my_token", "DB_PASSWORD", "AWS_REGION", "NATS_CREDS",
                 "LC_SECRET", "MY_CREDENTIALS_FILE"):
        assert looks_secret(name), name
    for name in ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "CUDA_VISIBLE_DEVICES"):
        assert not looks_secret(name), name
