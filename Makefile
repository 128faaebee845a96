.PHONY: setup run test lint bench

setup:  ## venv + CPU torch + emovec[dev] + the default model, dequantised and cached
	./scripts/setup.sh

run:    ## the main job: vectors for the default model, validated, read and steered
	.venv/bin/emovec run

test:   ## the whole test suite (real forward passes on the bundled model)
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check src tests benchmarks && .venv/bin/ruff format --check src tests benchmarks

bench:  ## extraction throughput against a bare forward pass, as ratios in one run
	.venv/bin/python benchmarks/bench_extract.py
