# Quick start: `make demo` and `make test` each build .venv on first use.
#   ACCEL=cpu (default) | tpu | cuda12 | cuda13: which jax the venv gets, the pinned jax of
#   requirements.txt with that accelerator's plugin (launch/tpu_pod.sh: tpu,
#   launch/slurm_gpu.sbatch: cuda12). A venv serves one ACCEL; `make clean` to change it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ACCEL ?= cpu
ACCELS := cpu tpu cuda12 cuda13
ifeq ($(filter $(ACCEL),$(ACCELS)),)
$(error ACCEL=$(ACCEL) is not one of $(ACCELS))
endif
JAX_VERSION := $(shell sed -n 's/^jax==\([0-9.]*\).*/\1/p' requirements.txt)
JAX_EXTRA := $(if $(filter cpu,$(ACCEL)),,"jax[$(ACCEL)]==$(JAX_VERSION)")
BASE := $(VENV)/.base-$(ACCEL)

.PHONY: demo clip test test-slow bench clean

$(BASE): requirements.txt setup.py
	@for s in $(VENV)/.base-*; do if [ -e "$$s" ] && [ "$$s" != "$@" ]; then \
	  echo "$(VENV) was built for ACCEL=$${s##*.base-}; run 'make clean' to rebuild it for ACCEL=$(ACCEL)" >&2; \
	  exit 2; fi; done
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt $(JAX_EXTRA)
	# CLIP's BPE vocabulary ships in open_clip_torch; --no-deps keeps its torchvision/timm out.
	$(PY) -m pip install -q --no-deps open_clip_torch==3.3.0
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# The name the launchers use: the venv for this ACCEL.
$(VENV)/.base: $(BASE)
	touch $@

$(VENV)/.dev: $(BASE) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# libtpu for `bench aot` only, beside the venv (never on its import path). A failed
# install is not fatal: the AOT tests skip and say why, and the next make retries.
$(VENV)/.aot: requirements-aot.txt | $(BASE)
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/libtpu -r requirements-aot.txt \
	  && touch $@ || echo "libtpu could not be installed: bench aot and tests/test_aot.py are skipped" >&2

demo: $(BASE)
	$(PY) -m flux_jax.cli.demo

# FluxViT-CLIP's Table 9 analogue on synthetic captions (docs/clip.md), on CPU.
clip: $(BASE)
	$(PY) -m flux_jax.experiments.clip_synthetic

# Test files run on TEST_WORKERS processes (pytest-xdist; a file stays on one worker).
TEST_WORKERS ?= 2

test: $(VENV)/.dev $(VENV)/.aot
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "not slow" tests

test-slow: $(VENV)/.dev $(VENV)/.aot
	$(PY) -m pytest -q -rs -m slow tests

bench: $(BASE)
	$(PY) -m flux_jax.bench forward

clean:
	rm -rf $(VENV) build *.egg-info
