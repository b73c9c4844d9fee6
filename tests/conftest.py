import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # local default; CI sets it
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--run_large", action="store_true", help="also run @large tests"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run_large"):
        return
    skip = pytest.mark.skip(reason="slow; run with --run_large")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.config.backend()}"


@pytest.fixture(autouse=True)
def _clear_session():
    keras.utils.clear_session()
    keras.config.set_dtype_policy("float32")
    yield
