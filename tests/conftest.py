import os

# Never reach for a model hub in tests: everything is built in code or ships in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run and keep no example database, so a
# failure reproduces anywhere and a pass means the same everywhere. HYPOTHESIS_PROFILE=explore
# (or --hypothesis-profile=explore) draws new examples each run, to look for new failures.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))
# Exact float32 on GPUs too: parity tolerances are 1e-5, which TF32 would not meet.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory):
    """A quick evaluation of two tiny image checkpoints (linear and lora on mnist-5k), for
    the report and notebook tests."""
    from robustfeat.evaluations.runner import evaluate
    from robustfeat.train import TrainConfig, finetune

    root = tmp_path_factory.mktemp("tiny-results")
    ck = []
    for method in ("linear", "lora"):
        out = root / method
        finetune(TrainConfig(model="tiny-cnn", data="mnist-5k", method=method, image_size=32, max_examples=256,
                             max_eval_examples=64, batch_size=32, lr=0.05 if method != "linear" else None,
                             checkpoint_every=100), out, progress=False)
        ck.append(out)
    res = root / "res"
    evaluate(ck, res, quick=True, shifts=["clean", "fog", "ood", "linear-probe", "imagenet-agreement", "cka", "weights"],
             progress=False)
    return res


@pytest.fixture
def browser():
    """Headless Chromium driven by Selenium (Debian's chromium and chromium-driver), with
    the browser console log kept, for the report tests."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
