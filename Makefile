# burnlab — `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
BURNLAB := $(VENV)/bin/burnlab
ANALYZE := $(VENV)/bin/burnlab-analyze
RUNS ?= runs
ARGS ?=
# make sweep-report: the hi stage's learning rates (experiment burn_unet_lr shortens the stages to take minutes)
SWEEP_LRS ?= 1e-4,3e-4,1e-3

.DEFAULT_GOAL := help
.PHONY: help setup lint format test test-slow burn-unet burn-te followfox followfox-xl burn-lora base analyze report verify sweep-report verdicts bench bench-attribution bench-peers bench-train gpu-check gpu-wheelhouse clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup_venv.sh
	scripts/setup_venv.sh $(VENV)

setup: $(VENV)/.installed ## create .venv (CPU or CUDA torch, pinned dependencies)

test: setup ## run the test suite (CPU, under 10 minutes)
	scripts/ensure_chromium.sh
	$(PY) -m pytest -q $(ARGS)

lint: setup ## ruff: lint and format check over the package, tests and benchmarks (CI runs it)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format: setup ## ruff: fix the import order and format the code
	$(VENV)/bin/ruff check --select I --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

test-slow: setup ## the slow end-to-end tests (an SD 1.5-sized model on the CPU: ~5 minutes, ~17 GB of memory)
	$(PY) -m pytest -q -m slow $(ARGS)

burn-unet: setup ## the UNet burn study on the embedded toy world (samples, grids, GIFs, report)
	$(BURNLAB) experiment=burn_unet $(ARGS)

burn-te: setup ## the text-encoder burn study on the embedded toy world
	$(BURNLAB) experiment=burn_te $(ARGS)

followfox: setup ## both burns on one shared baseline
	$(BURNLAB) experiment=followfox $(ARGS)

# the toy SDXL study's lengths: each branch's 500 + 500 epochs cut to 200 + 200, checkpoints every 100
XL_TOY_LENGTHS := $(foreach s,unet te te2 tes,stages.$(s)_lo.epochs=200 stages.$(s)_hi.epochs=200 stages.$(s)_lo.save_epochs=[100,200] stages.$(s)_hi.save_epochs=[100,200])

followfox-xl: setup ## the study on the toy SDXL: one baseline, then UNet, TE1, TE2 and both-TE burns (~15 min)
	$(BURNLAB) experiment=followfox_xl $(XL_TOY_LENGTHS) $(ARGS)

burn-lora: setup ## both burns on LoRA adapters (UNet-LoRA, text-encoder-LoRA) on one shared LoRA baseline
	$(BURNLAB) experiment=lora_followfox $(ARGS)

base: setup ## pretrain the embedded toy base model and probe (resumable; result is committed)
	$(PY) -m burnlab.toy.pretrain $(ARGS)

analyze: setup ## analyse one run: make analyze RUN=runs/burn_unet
	$(ANALYZE) $(or $(RUN),$(RUNS)/burn_unet) $(ARGS)

report: setup ## side-by-side report of the UNet and TE burns
	$(ANALYZE) $(RUNS)/burn_unet --compare $(RUNS)/burn_te --out $(RUNS)/report $(ARGS)

verify: setup ## check the run store's hashes, markers, rows and samples (burnlab-verify; ARGS=--repair removes what is damaged)
	$(VENV)/bin/burnlab-verify $(RUNS) $(ARGS)

sweep-report: setup ## a 3-value lr sweep of the UNet burn (short stages), then one report across its jobs (~5 min)
	$(BURNLAB) -m experiment=burn_unet_lr 'stages.unet_hi.lr=$(SWEEP_LRS)' paths.runs=$(RUNS) $(ARGS)
	$(ANALYZE) $(RUNS)/burn_unet_lr_multirun

verdicts: setup ## the verdict's benchmark: short toy burns, one threshold chosen on calibration seeds, held-out tables (~60 min)
	$(PY) bench/verdicts.py --runs $(RUNS) --readme experiments/README.md --install $(ARGS)

bench: setup ## sampling throughput: testing plan vs a naive loop
	$(PY) bench/sampling_throughput.py $(ARGS)

bench-attribution: setup ## what one examined checkpoint costs: the swap corners and the drift instruments (toy; ARGS="--model sd15_random ...")
	$(PY) bench/attribution_cost.py $(ARGS)

$(VENV)/.bench-peers: $(VENV)/.installed scripts/setup_bench_peers.sh constraints.txt
	scripts/setup_bench_peers.sh $(VENV)

bench-peers: $(VENV)/.bench-peers ## what bench-train's reference needs: diffusers' train_text_to_image.py (pinned), datasets, a torchvision for it

bench-train: setup bench-peers ## training throughput: burnlab's stages vs diffusers' train_text_to_image.py itself, and checkpoint storage (~8 min)
	$(PY) bench/train_throughput.py $(ARGS)

gpu-check: setup ## on a CUDA machine: sd15_random bf16/fp16 stages, fp16 resume, half sampling, attribution, CLIP (<= 8 min; ARGS=--dry-run on a CPU)
	$(PY) bench/gpu_check.py --out $(RUNS)/gpu_check $(ARGS)

gpu-wheelhouse: setup ## wheels the GPU machine lacks (diffusers, hydra, ..., burnlab) in wheelhouse/, to carry there (scripts/gpu_check_remote.sh)
	scripts/gpu_wheelhouse.sh

clean: ## remove runs and caches (keeps .venv)
	rm -rf $(RUNS) outputs multirun wandb .pytest_cache
