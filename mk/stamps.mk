# Included by the Makefile before its stages: the machinery every stage rule uses (knob words -> flags
# and stamp records, the lock, begin/finish). Staleness itself is decided in mk/checks.mk.

# ============================================================================ the staleness machinery
FORCE: ;
empty :=
space := $(empty) $(empty)
# exact string equality (`filter` would treat % as a wildcard)
eq = $(and $(findstring x$(1),x$(2)),$(findstring x$(2),x$(1)))
# quote a make value for the shell
q = '$(subst ','\'',$(1))'

# A stage's knobs are declared once, per command, as words `flag=VAR` (`<cmd>_flags`; a store-true
# flag, passed when VAR=1, in `<cmd>_switches`), where <cmd> is the module's name (scripts.<cmd>,
# nanochat.dataset). From those words come
#   $(call flags,<cmd>)     the command's flags: --flag=$(VAR) ...
#   $(call knobs,<stage>)   the stage's semantic variables (of all of `<stage>_cmds`), sorted
#   <stage>_params          the stamp's record: VAR=value;... plus the free-form <STAGE>_ARGS
# and `make help` lists each stage's knobs from the same words. `<stage>_exec` names the stage's
# execution-only variables (never recorded). Stamps record MAKE VARIABLE names (`DEPTH=20`), so
# `make status` says `parameter DEPTH: 20 -> 26`. (Stamps written before this layout recorded other
# keys, e.g. depth=, lr_scalar=: each such stage reruns once; training resumes where compatible.)
flag_name = $(firstword $(subst =, ,$(1)))
flag_var = $(lastword $(subst =, ,$(1)))
flags = $(strip $(foreach f,$($(1)_flags),--$(call flag_name,$(f))=$($(call flag_var,$(f)))) $(foreach f,$($(1)_switches),$(if $(filter 1,$($(call flag_var,$(f)))),--$(call flag_name,$(f)))))
knobs = $(sort $(foreach c,$($(1)_cmds),$(foreach f,$($(c)_flags) $($(c)_switches),$(call flag_var,$(f)))))
code_hash = $(if $(filter 1,$(TRACK_CODE)),;code=$(firstword $(shell cat $(1) 2>/dev/null | sha256sum)))
params_of = $(subst $(space),;,$(strip $(foreach v,$(call knobs,$(1)),$(v)=$($(v)))));$($(1)_args)=$($($(1)_args))$(call code_hash,$($(1)_code))


# `make redo-<stage>` forces that stage (and everything after it)
REDO := $(patsubst redo-%,%,$(filter redo-%,$(MAKECMDGOALS)))

# Staleness is decided on stamp CONTENT and output files, never on mtimes (a touch, a checkout or a
# clock step must neither trigger nor hide a rerun), by ONE function, nanochat.pipeline's `evaluate`:
# `make status` prints its reasons, and the parse-time `check` in mk/checks.mk gives make the
# stale stages (a stamp is read there, once all stage parameters are known). A stage is stale iff it
# is redone, an upstream stage is stale (it will rerun first), its stamp is missing, the stamp records
# other parameters or other upstream ids than there are now, or an output it records is missing or
# changed. Each stage's `<stage>_outputs` (relative to the base dir, {step} = its final step) is what
# `finish` records.
pipe_stages = --base $(call q,$(BASE)) $(foreach s,$(1),--stage $(call q,$(s)|$($(s)_deps)|$($(s)_params)))
# how a long stage treats existing checkpoints: resume if compatible, unless forced
resume_mode = $(if $(filter $(1),$(REDO)),fresh,auto)

# Only one pipeline per base dir: the first recipe of a run claims $(BASE)/.lock for this make
# process (its pid + start time); a second make stops with a clear message. A lock whose owner
# died (kill -9) is stale and is taken over. $$PPID in a recipe shell is make itself.
# It also notes the stage's start time, so `finish` can record its wall time for the report.
take_lock = @$(SYSTEM_PYTHON) -m nanochat.pipeline lock $(call q,$(BASE)) $$PPID --stage $(1)
# after the stage succeeded: write its stamp (parameters, upstream ids, outputs, a fresh id) atomically
define finish
$(if $(filter 0,$(NODE_RANK)),@$(SYSTEM_PYTHON) -m nanochat.pipeline finish $(call q,$(BASE)) $(1) $(call q,$($(1)_params)) \
  --deps '$($(1)_deps)' --outputs $(call q,$($(1)_outputs)),@true)
endef
# the first lines of every stage recipe: claim the lock, drop the stamp (and the step file)
define begin
$(call take_lock,$(1))
rm -f $(call stamp,$(1)) $(if $(2),$(STAMPS)/$(1).step)
endef
step_of = $$(cat $(STAMPS)/$(1).step)
