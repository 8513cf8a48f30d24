# Included last by the Makefile, once every knob is known: validation of the values, the one
# parse-time staleness check, and the .venv rule.

# ============================================================================ validation
# Pure make functions: instant, no subprocess, nothing touched; an error here stops make while it
# still parses, before any recipe runs.
strip_digits = $(subst 9,,$(subst 8,,$(subst 7,,$(subst 6,,$(subst 5,,$(subst 4,,$(subst 3,,$(subst 2,,$(subst 1,,$(subst 0,,$(1)))))))))))
is_posint = $(and $(strip $(1)),$(if $(strip $(call strip_digits,$(1))),,y),$(if $(subst 0,,$(1)),y))
is_int = $(if $(filter 0,$(1)),y,$(call is_posint,$(patsubst -%,%,$(1))))
has_digit = $(if $(call eq,$(call strip_digits,$(1)),$(1)),,y)
is_number = $(and $(call has_digit,$(1)),$(if $(strip $(subst e,,$(subst E,,$(subst .,,$(subst -,,$(subst +,,$(call strip_digits,$(1)))))))),,y))
check_posint = $(if $(call is_posint,$($(1))),,$(error $(1)=$($(1)) must be a positive integer (e.g. $(1)=$(2))))
check_int = $(if $(call is_int,$($(1))),,$(error $(1)=$($(1)) must be an integer (-1 = automatic)))
check_number = $(if $(call is_number,$($(1))),,$(error $(1)=$($(1)) must be a number (e.g. $(1)=$(2))))
check_noquote = $(if $(findstring ',$($(1))),$(error $(1) must not contain a single quote))
# process counts for parse-time arithmetic: 1 while NPROC / NNODES is not a number (the validation
# below refuses it; `make help` must still print)
node_procs = $(if $(call is_posint,$(NPROC)),$(NPROC),1)
all_procs = $(node_procs) * $(if $(call is_posint,$(NNODES)),$(NNODES),1)

# CPU threads per process (an execution setting, in no stamp; the environment or command line wins):
# on CPU this node's cores split over its processes, so one process gets them all (torchrun alone
# would pin each to 1); on GPUs 1, the setting every GPU benchmark in bench/ used. Computed before
# the validation so that `make help` shows it.
ifndef OMP_NUM_THREADS
  ifeq ($(DEVICE_TYPE),cpu)
    OMP_NUM_THREADS := $(shell n=$$(nproc 2>/dev/null || echo 1); t=$$(( n / $(node_procs) )); echo $$(( t > 0 ? t : 1 )))
  else
    OMP_NUM_THREADS := 1
  endif
endif

ifneq ($(filter-out help,$(or $(MAKECMDGOALS),help)),)
$(foreach s,$(REDO),$(if $(filter $(s),$(ALL_STAGES)),,$(error redo-$(s): unknown stage; stages are: $(ALL_STAGES))))
$(foreach v,NPROC NNODES DEPTH VOCAB_SIZE MAX_SEQ_LEN DATA_SHARDS TOK_MAX_CHARS TOK_DOC_CAP ASPECT_RATIO HEAD_DIM TOTAL_BATCH_SIZE DEVICE_BATCH_SIZE EVAL_TOKENS MID_TOTAL_BATCH_SIZE MID_EVAL_TOKENS SFT_EPOCHS SFT_DEVICE_BATCH_SIZE SFT_TARGET_EXAMPLES SFT_EVAL_STEPS CHAT_MAX_NEW_TOKENS RL_EPOCHS RL_EXAMPLES_PER_STEP RL_SAMPLES RL_MAX_NEW_TOKENS RL_EVAL_EXAMPLES RL_DEVICE_BATCH_SIZE,$(call check_posint,$(v),4))
$(foreach v,NUM_ITERATIONS MID_ITERATIONS SFT_ITERATIONS SFT_METRICS_MAX CHAT_EVAL_MAX CORE_MAX_PER_TASK NODE_RANK RL_ITERATIONS,$(call check_int,$(v)))
$(foreach v,EMBEDDING_LR UNEMBEDDING_LR MATRIX_LR WEIGHT_DECAY WARMUP_RATIO WARMDOWN_RATIO FINAL_LR_FRAC TARGET_PARAM_DATA_RATIO MID_INIT_LR_FRAC SFT_INIT_LR_FRAC RL_LR_FRAC RL_TEMPERATURE,$(call check_number,$(v),0.02))
$(foreach v,DATA_ARGS TOK_ARGS BASE_ARGS MID_ARGS SFT_ARGS RL_ARGS WANDB_RUN MODEL_TAG,$(call check_noquote,$(v)))
$(if $(filter 0 1,$(FP8)),,$(error FP8=$(FP8) must be 0 or 1))
$(if $(filter 0 1,$(RL)),,$(error RL=$(RL) must be 0 or 1 (1 = speedrun also runs the rl stage)))
$(if $(filter 1,$(RL_SAMPLES)),$(error RL_SAMPLES=1 gives every sample the group's own reward (no learning signal): use RL_SAMPLES>=2))
$(if $(filter cpu cuda mps,$(DEVICE_TYPE)),,$(error DEVICE_TYPE=$(DEVICE_TYPE) must be cpu, cuda or mps))
$(if $(filter L S,$(subst S,S ,$(subst L,L ,$(WINDOW_PATTERN)))),,$(error WINDOW_PATTERN=$(WINDOW_PATTERN) must be letters S and L, e.g. SSSL))
$(if $(strip $(subst S,,$(subst L,,$(WINDOW_PATTERN)))),$(error WINDOW_PATTERN=$(WINDOW_PATTERN) must be letters S and L, e.g. SSSL))
ifeq ($(DEVICE_TYPE),cuda)
  ifeq ($(NGPUS),0)
    $(error DEVICE_TYPE=cuda but no NVIDIA GPU is visible: use DEVICE_TYPE=cpu PRESET=tiny, or check the driver with `make doctor`)
  endif
  ifneq ($(shell test $(NPROC) -le $(NGPUS) && echo ok),ok)
    $(error NPROC=$(NPROC) is larger than the $(NGPUS) GPU(s) visible: set NPROC<=$(NGPUS))
  endif
endif
# batch sizes must divide: refused here, before any recipe removes a stamp (shell arithmetic, read-only)
rem = $(shell echo $$(( $(1) % ($(2)) )))
$(if $(filter 0,$(call rem,$(TOTAL_BATCH_SIZE),$(DEVICE_BATCH_SIZE)*$(MAX_SEQ_LEN)*$(NPROC)*$(NNODES))),,$(error TOTAL_BATCH_SIZE=$(TOTAL_BATCH_SIZE) is not a multiple of DEVICE_BATCH_SIZE x MAX_SEQ_LEN x NPROC x NNODES = $(DEVICE_BATCH_SIZE) x $(MAX_SEQ_LEN) x $(NPROC) x $(NNODES): change one of them))
$(if $(filter 0,$(call rem,$(MID_TOTAL_BATCH_SIZE),$(DEVICE_BATCH_SIZE)*$(MAX_SEQ_LEN)*$(NPROC)*$(NNODES))),,$(error MID_TOTAL_BATCH_SIZE=$(MID_TOTAL_BATCH_SIZE) is not a multiple of DEVICE_BATCH_SIZE x MAX_SEQ_LEN x NPROC x NNODES = $(DEVICE_BATCH_SIZE) x $(MAX_SEQ_LEN) x $(NPROC) x $(NNODES): change one of them))
$(if $(filter 0,$(call rem,$(SFT_TARGET_EXAMPLES),$(SFT_DEVICE_BATCH_SIZE)*$(NPROC)*$(NNODES))),,$(error SFT_TARGET_EXAMPLES=$(SFT_TARGET_EXAMPLES) is not a multiple of SFT_DEVICE_BATCH_SIZE x NPROC x NNODES = $(SFT_DEVICE_BATCH_SIZE) x $(NPROC) x $(NNODES): change one of them))
# (only where rl can run: a process count that does not divide it must not block the other stages)
ifneq ($(or $(filter 1,$(RL)),$(filter rl redo-rl,$(MAKECMDGOALS))),)
$(if $(filter 0,$(call rem,$(RL_EXAMPLES_PER_STEP),$(NPROC)*$(NNODES))),,$(error RL_EXAMPLES_PER_STEP=$(RL_EXAMPLES_PER_STEP) is not a multiple of NPROC x NNODES = $(NPROC) x $(NNODES): change one of them))
endif

# ONE interpreter start per make call (stdlib only, no torch): refuses a base dir that is a file, or a
# deleting verb aimed at /, $HOME or this checkout (resolved paths, however spelled), in one line;
# else prints `ok` and the stale stages, which get FORCE. Never writes anything.
PIPE := $(shell $(SYSTEM_PYTHON) -m nanochat.pipeline check $(call pipe_stages,$(ALL_STAGES) report) --redo '$(REDO)' \
  --home $(call q,$(HOME)) --repo $(call q,$(CURDIR)) \
  $(if $(filter clean clean-checkpoints distclean,$(MAKECMDGOALS)),--deletes $(call q,NANOCHAT_BASE_DIR=$(BASE))) \
  $(if $(filter distclean,$(MAKECMDGOALS)),--deletes $(call q,VENV=$(VENV))) 2>&1)
$(if $(filter ok,$(firstword $(PIPE))),,$(error $(or $(PIPE),nanochat.pipeline check printed nothing: is SYSTEM_PYTHON=$(SYSTEM_PYTHON) a working python3?)))
$(foreach s,$(wordlist 2,$(words $(PIPE)),$(PIPE)),$(eval $(if $(filter report,$(s)),$(REPORT),$(call stamp,$(s))): FORCE))
endif

export OMP_NUM_THREADS

# ============================================================================ the virtualenv
# Content-tracked like a stage: reinstalled when pyproject.toml's content or TORCH_SPEC changes.
venv_params := torch=$(TORCH_SPEC);pip_extra=$(PIP_EXTRA);extras=$(PY_EXTRAS);pyproject=$(firstword $(shell sha256sum pyproject.toml 2>/dev/null))
$(VENV)/.installed: $(if $(call eq,$(strip $(file <$(VENV)/.installed)),$(strip $(venv_params))),,FORCE)
	@echo "bootstrapping $(VENV) with $(TORCH_SPEC) (see TORCH_SPEC in README.md)"
	rm -f $@
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) '$(TORCH_SPEC)'
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) -e '.[$(PY_EXTRAS)]'
	@printf '%s' $(call q,$(venv_params)) > $@.tmp && mv -f $@.tmp $@
