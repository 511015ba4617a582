# One command for the demo, one for the tests; both create and fill the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU-only machines install the CPU build of torch first (torch==2.13.0 from the local wheel cache here),
# so that requirements.txt resolves against it and no CUDA packages are pulled. On a CUDA machine
# (nvidia-smi present) this step is skipped and requirements.txt brings the CUDA wheels.
CPU_ONLY ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 0 || echo 1)
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q
DEMO_DATA ?= datasets/synthetic_fmb
DEMO_RUN ?= runs/demo

.PHONY: venv test demo lint bench clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ "$(CPU_ONLY)" = 1 ]; then $(PIP) -c constraints-cpu.txt torch torchvision; fi
	if [ "$(CPU_ONLY)" = 1 ]; then $(PIP) -c constraints-cpu.txt -r requirements.txt -r requirements-dev.txt; \
	else $(PIP) -r requirements.txt -r requirements-dev.txt; fi
	touch $@

test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m data.synthetic --out $(DEMO_DATA) --train 96 --test 12 --seed 0
	HF_HUB_OFFLINE=1 $(BIN)/python train.py --config configs/demo.yaml --set data.root=$(DEMO_DATA) --run-dir $(DEMO_RUN)
	HF_HUB_OFFLINE=1 $(BIN)/python test.py --config $(DEMO_RUN)/config.yaml --checkpoint $(DEMO_RUN)/best.pt \
		--ir $(DEMO_DATA)/test/Infrared --vi $(DEMO_DATA)/test/Visible --out $(DEMO_RUN)/fused --save-maps
	HF_HUB_OFFLINE=1 $(BIN)/python eval_metrics.py --ir $(DEMO_DATA)/test/Infrared --vi $(DEMO_DATA)/test/Visible \
		--fused UAAFusion=$(DEMO_RUN)/fused --json $(DEMO_RUN)/metrics.json --markdown
	@echo
	@echo "Demo finished. Fused images: $(DEMO_RUN)/fused   attribution maps: $(DEMO_RUN)/fused/maps"
	@echo "Metrics: $(DEMO_RUN)/metrics.json   TensorBoard: $(BIN)/tensorboard --logdir $(DEMO_RUN)/tb"

bench: venv
	$(BIN)/python scripts/bench_attribution.py
	$(BIN)/python scripts/bench_metrics.py

lint: venv
	$(BIN)/python -m pip install -q ruff && $(BIN)/ruff check .

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_RUN)
