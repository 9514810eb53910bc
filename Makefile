# Every target sets up .venv from a bare Python when missing (pip only; torch comes from the local index).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
DEMO_DIR ?= demo_runs

.PHONY: install test lint demo demo-supcon demo-roi demo-tracking demo-prototype demo-senet bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-dev-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-dev-nodeps.txt
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP) requirements-bench.txt requirements-bench-nodeps.txt
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) -m pip install -q --no-deps -r requirements-bench-nodeps.txt
	touch $(BENCH_STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: demo-supcon demo-roi demo-tracking demo-prototype demo-senet

demo-supcon: $(STAMP)
	$(PY) scripts/demo_supcon.py --out $(DEMO_DIR)/supcon

demo-roi: $(STAMP)
	bash scripts/demo_roi.sh $(DEMO_DIR)/roi

demo-tracking: $(STAMP)
	$(PY) tracking.py

demo-prototype: $(STAMP)
	$(PY) scripts/make_semiseg_data.py --out $(DEMO_DIR)/semiseg/ACDC_synthetic --layout acdc --train 8 --test 2 --size 48
	$(PY) scripts/train_semiseg.py --root_path $(DEMO_DIR)/semiseg/ACDC_synthetic --dataset acdc --labelnum 2 \
		--patch_size 48 48 --batch_size 8 --labeled_bs 4 --base_channels 8 --optimizer adamw --base_lr 0.002 \
		--max_iterations 120 --eval_interval 60 --num_workers 0 --use_contrastive_prototype --use_learned_selector \
		--memory_ignore_classes 0 --output_dir $(DEMO_DIR)/semiseg/train
	$(PY) bench/semiseg_bench.py --preset demo --out $(DEMO_DIR)/semiseg/bench

demo-senet: $(STAMP)
	bash scripts/demo_senet.sh $(DEMO_DIR)/senet

bench: $(BENCH_STAMP)
	$(PY) bench/supcon_bench.py
	$(PY) bench/roi_bench.py
	$(PY) bench/tracking_bench.py
	$(PY) bench/prototype_bench.py
	$(PY) bench/semiseg_bench.py --out $(DEMO_DIR)/semiseg_bench
	$(PY) bench/senet_bench.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
