"""r1hpc.model.mcore_compat: which megatron-core versions are supported and tested, and the
inference-mode flag that 0.19 reads (the installed series decides what the flag test checks)."""
from __future__ import annotations

import pytest

from r1hpc.model import mcore_compat
from r1hpc.model.mcore_compat import MegatronVersionError


@pytest.mark.parametrize("version, release", [("0.16.1", "0.16.1"), ("0.19.2+65a6cf7", "0.19.2"),
                                              ("0.19.0rc1", "0.19.0")])
def test_release_drops_local_labels_and_pre_releases(version, release):
    assert mcore_compat.release(version) == release


def test_each_supported_series_and_its_tested_release():
    assert mcore_compat.features("0.16.1").python == "3.11"
    assert mcore_compat.features("0.19.2+65a6cf7").inference_mode_flag
    assert mcore_compat.is_tested("0.16.1") and mcore_compat.is_tested("0.19.2+65a6cf7")
    assert not mcore_compat.is_tested("0.19.0") and not mcore_compat.is_tested("0.18.2")


@pytest.mark.parametrize("version", ["0.15.3", "0.17.1", "0.18.2", "1.0.0"])
def test_other_series_are_refused_naming_the_supported_ones(version):
    with pytest.raises(MegatronVersionError) as e:
        mcore_compat.features(version)
    msg = str(e.value)
    assert f"megatron-core {version} is installed" in msg and "0.16.1" in msg and "0.19.2" in msg


def test_installed_version_is_supported_and_ci_tests_it():
    installed = mcore_compat.installed_version()
    assert mcore_compat.is_tested(installed), f"CI's lock should pin a tested release, found {installed}"


def test_inference_mode_sets_megatrons_flag_where_it_exists_and_nests():
    if not mcore_compat.features().inference_mode_flag:
        with mcore_compat.inference_mode():
            pass  # 0.16: an inference context alone selects inference; nothing to set
        return
    from megatron.core.inference.utils import InferenceMode

    assert not InferenceMode.is_active()
    with mcore_compat.inference_mode():
        assert InferenceMode.is_active()
        with mcore_compat.inference_mode():
            pass
        assert InferenceMode.is_active()  # the inner use did not clear the outer one's flag
    assert not InferenceMode.is_active()
