"""A GPU worker's share of the host's tokenizer helpers."""

from __future__ import annotations

from models.tokenize_pool import helper_budget
from workers.main import shared_helper_budget


def _gpus(tmp_path, n):
    for i in range(n):
        (tmp_path / f"0000:{i:02x}:00.0").mkdir(parents=True)
    return tmp_path


def test_the_host_budget_is_divided_by_its_gpus_and_the_models(tmp_path, monkeypatch):
    monkeypatch.setattr("models.tokenize_pool.os.sched_getaffinity", lambda pid: set(range(64)))
    assert helper_budget() == 12
    assert shared_helper_budget(1, _gpus(tmp_path / "one", 1)) == 12
    assert shared_helper_budget(1, _gpus(tmp_path / "four", 4)) == 3
    assert shared_helper_budget(2, tmp_path / "four") == 1  # 12 // 8, never below one
    assert shared_helper_budget(3, tmp_path / "four") == 1
    assert shared_helper_budget(1, tmp_path / "no-driver") == 12  # unreadable: one GPU


def test_a_small_host_keeps_tokenizing_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr("models.tokenize_pool.os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert shared_helper_budget(1, _gpus(tmp_path / "gpus", 1)) == 0


def test_a_cpu_worker_tokenizes_in_one_helper_where_it_has_two_cores(monkeypatch):
    """A service starts one helper on a CPU (the word cache, off the device thread's GIL); an
    offline engine, whose helpers would re-import its caller's script, starts none."""
    import torch

    from models.engine import default_tokenizer_processes

    cpu = torch.device("cpu")
    monkeypatch.setattr("models.tokenize_pool.os.sched_getaffinity", lambda pid: {0, 1})
    assert default_tokenizer_processes(cpu, serving=True) == 1
    assert default_tokenizer_processes(cpu) == 0
    monkeypatch.setattr("models.tokenize_pool.os.sched_getaffinity", lambda pid: {0})
    assert default_tokenizer_processes(cpu, serving=True) == 0  # one core: the forward needs it
