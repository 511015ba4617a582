# One command for the demo, one for the tests; both create and fill the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU-only machines install the CPU build of torch first (torch==2.13.0 from the local wheel cache here),
# so that requirements.txt resolves against it and no CUDA packages are pulled. On a CUDA machine
# (nvidia-smi present) this step is skipped and requirements.txt brings the CUDA wheels.
CPU_ONLY ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 0 || echo 1)
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q
DEMO_OUT ?= runs/demo
TRAIN_DATA ?= datasets/synthetic_fmb
TRAIN_RUN ?= runs/demo_train

.PHONY: venv test demo demo-train lint bench gpu-check docs clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ "$(CPU_ONLY)" = 1 ]; then $(PIP) -c constraints-cpu.txt torch torchvision; fi
	if [ "$(CPU_ONLY)" = 1 ]; then $(PIP) -c constraints-cpu.txt -r requirements.txt -r requirements-dev.txt; \
	else $(PIP) -r requirements.txt -r requirements-dev.txt; fi
	touch $@

# One pytest worker per usable core, each pinned to its core (tests/conftest.py); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)))" 2>/dev/null || echo 0)
test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) tests

# Fuse the bundled real pairs (assets/samples) with the shipped model (checkpoints/uaafusion_mfnet.pt).
demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m scripts.demo --out $(DEMO_OUT)

# The whole pipeline on generated scenes: generate, train 80 steps (continued if interrupted; nothing to do when
# finished), fuse the test split, score it beside the sources.
demo-train: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m data.synthetic --out $(TRAIN_DATA) --train 96 --test 12 --seed 0
	if [ -f $(TRAIN_RUN)/last.pt ]; then HF_HUB_OFFLINE=1 $(BIN)/python train.py --resume $(TRAIN_RUN); \
	else HF_HUB_OFFLINE=1 $(BIN)/python train.py --config configs/demo.yaml --set data.root=$(TRAIN_DATA) \
		--run-dir $(TRAIN_RUN); fi
	HF_HUB_OFFLINE=1 $(BIN)/python test.py --checkpoint $(TRAIN_RUN)/last.pt \
		--ir $(TRAIN_DATA)/test/Infrared --vi $(TRAIN_DATA)/test/Visible --out $(TRAIN_RUN)/fused --save-maps
	HF_HUB_OFFLINE=1 $(BIN)/python eval_metrics.py --ir $(TRAIN_DATA)/test/Infrared --vi $(TRAIN_DATA)/test/Visible \
		--fused UAAFusion=$(TRAIN_RUN)/fused --references --json $(TRAIN_RUN)/metrics.json --markdown
	@echo
	@echo "Fused images: $(TRAIN_RUN)/fused   attribution maps: $(TRAIN_RUN)/fused/maps"
	@echo "Metrics: $(TRAIN_RUN)/metrics.json   TensorBoard: $(BIN)/tensorboard --logdir $(TRAIN_RUN)/tb"

bench: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m scripts.bench_model
	HF_HUB_OFFLINE=1 $(BIN)/python -m scripts.bench_attribution
	$(BIN)/python -m scripts.bench_metrics

gpu-check: venv
	bash scripts/gpu_check.sh

docs: venv
	$(BIN)/python -m engine.config

lint: venv
	$(BIN)/python -m pip install -q ruff && $(BIN)/ruff check .

clean-demo:
	rm -rf $(DEMO_OUT) $(TRAIN_DATA) $(TRAIN_RUN)
