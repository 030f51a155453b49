# napari-unet: `make demo` and `make test` do all set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# torch first, pinned: the CPU build that lies on this machine's disk (a loose spec would pull a multi-GB CUDA build).
TORCH ?= torch==2.13.0

.PHONY: install lint test test-core demo demo-headless bench docs clean xvfb

install: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[testing]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# napari tests draw layers: they need an X server (Xvfb), a Qt binding (PyQt6, from the testing extra)
# and the X11/xcb libraries Qt6's xcb platform plugin loads; apt-get installs whichever are missing.
QT_DEBS := xvfb xauth libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 \
	libxcb-shape0 libxcb-xkb1 libxcb-randr0 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3
xvfb:
	@command -v dpkg >/dev/null 2>&1 || exit 0; \
	missing=$$(for p in $(QT_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing for the GUI tests:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The rules that run: ruff (lint + format check, config in pyproject.toml) and import-linter's contracts
# (core/ never imports the widgets, the CLI, napari or Qt); tests/test_imports.py adds the same rule for
# scripts/ and benchmarks/ and shows a contract failing on a deliberate violation.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# a 1280 x 800 screen, a small laptop's: tests/widgets/test_first_hour.py checks every button it presses is on it
test: $(STAMP) xvfb
	xvfb-run -a -s "-screen 0 1280x800x24" $(BIN)/python -m pytest -p no:cacheprovider

test-core: $(STAMP)
	$(BIN)/python -m pytest tests/core -p no:cacheprovider

# Opens napari with U-Net Segment docked and the sample EM stack loaded; without a display
# it runs the headless demo instead (train briefly, predict, write TIFF + PNG overlay to out/).
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

demo-headless: $(STAMP)
	$(BIN)/python scripts/demo.py --headless

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -c "import elasticdeform" 2>/dev/null || $(BIN)/python -m pip install -q --no-binary elasticdeform --no-build-isolation elasticdeform
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) out build *.egg-info src/*.egg-info
