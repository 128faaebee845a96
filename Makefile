.PHONY: setup run test lint bench interop

setup:  ## venv + CPU torch + emovec[dev] + the default model, dequantised and cached
	./scripts/setup.sh

run:    ## the main job: vectors for the default model, validated, read and steered
	.venv/bin/emovec run

test:   ## the whole test suite (real forward passes on the bundled model), with line coverage
	.venv/bin/python -m pytest -q --cov=emovec --cov-report=term:skip-covered

lint:   ## ruff, and mypy (strict) on the core and shared services
	.venv/bin/ruff check src tests benchmarks scripts && .venv/bin/ruff format --check src tests benchmarks scripts
	.venv/bin/python -m mypy

bench:  ## speed and memory, measured side by side as ratios (see docs/performance.md)
	.venv/bin/python -m pip install -q --no-deps steering-vectors==0.12.2
	.venv/bin/python -m pip install -q --no-deps --ignore-requires-python emotion-probes==0.1.0
	mkdir -p benchmarks/results
	.venv/bin/python benchmarks/bench_extract.py --json benchmarks/results/extract.json
	.venv/bin/python benchmarks/bench_hooks.py --json benchmarks/results/hooks.json
	.venv/bin/python benchmarks/bench_memory.py --json benchmarks/results/memory.json
	.venv/bin/python benchmarks/bench_reextract.py --json benchmarks/results/reextract.json
	.venv/bin/python benchmarks/bench_monitor.py --json benchmarks/results/monitor.json

# llama-cpp-python ships only as source: its wheel is built once (10+ minutes, low priority)
# into $(WHEELS) and reused; not part of `make setup` or `make test`.
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
WHEELS ?= $(HOME)/.cache/emovec/wheels

interop:  ## emovec's control vectors through real llama.cpp (see docs/interop.md)
	@.venv/bin/python -c "import llama_cpp" 2>/dev/null || { \
	  ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS=-DGGML_NATIVE=OFF nice -n 19 .venv/bin/python -m pip wheel --no-deps \
	    $(LLAMA_CPP_PYTHON) -w $(WHEELS) && \
	  .venv/bin/python -m pip install --find-links $(WHEELS) $(LLAMA_CPP_PYTHON); }
	EMOVEC_INTEROP=1 .venv/bin/python -m pytest -q -s tests/test_llama_cpp.py
