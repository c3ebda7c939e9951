"""benchmarks.reference_train: the baseline's steps run and are timed in a spawned process of their own."""

import time

import pytest

from benchmarks.reference_train import BATCH, ReferenceProcess


def test_rate_times_the_steps_in_the_reference_process_and_close_ends_it():
    with ReferenceProcess("train_vit", threads=2, n_images=512) as reference:
        process = reference._proc
        assert process.is_alive() and process.pid is not None
        t0 = time.perf_counter()
        rate = reference.rate(1)
        outside = time.perf_counter() - t0
        # the child times the step alone; the parent's wall time adds only the pipe round trip
        assert 0.5 * outside < BATCH / rate <= outside
    assert not process.is_alive() and process.exitcode == 0


def test_a_failure_in_the_reference_process_is_raised_with_its_traceback():
    with pytest.raises(RuntimeError, match=r"the reference process failed:(.|\n)*set_num_threads"):
        ReferenceProcess("train_vit", threads=-1, n_images=512)


def test_an_unknown_target_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown reference target 'train_cait'; one of train_vit, train_swin"):
        ReferenceProcess("train_cait")
