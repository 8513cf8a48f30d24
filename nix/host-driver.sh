# nanochat: make the host's NVIDIA driver (libcuda.so.1 and friends) visible to Nix-built programs.
# Sourced by the CUDA dev shells' shellHook (nix/shell.nix). POSIX sh + bash; no output on success.
#
# * NixOS, or a host prepared as docs/nix.md describes: /run/opengl-driver/lib/libcuda.so.1 exists
#   and is already in the RUNPATH of Nix's CUDA binaries: nothing to do.
# * Any other Linux: find the directory holding the host's libcuda.so.1 (`ldconfig -p` of the
#   HOST, then well-known directories), symlink ONLY the driver's own libraries (libcuda.so*,
#   libcudadebugger.so*, libnvidia-*.so*) into a private per-host directory and put that directory
#   first on LD_LIBRARY_PATH; TRITON_LIBCUDA_PATH names the same directory for Triton, which looks
#   for libcuda on its own (compiling kernel launchers) instead of through the loader.
# * WSL 2: the driver lives in /usr/lib/wsl/lib, and its libcuda.so.1 is a shim that loads
#   libdxcore.so (the DirectX kernel interface) from the same directory, which then finds the
#   Windows driver's own files under /usr/lib/wsl/drivers. So libdxcore.so* is linked too when the
#   driver directory has it (only WSL's does). The host's /usr/lib itself is never put on LD_LIBRARY_PATH: its
#   libc/libstdc++ would be loaded into Nix programs and break them (GLIBCXX_* not found).
#
# Knobs: NANOCHAT_HOST_DRIVER=off (do nothing) | /some/dir (use that directory);
#        NANOCHAT_HOST_DRIVER_DIRS="dir1 dir2" (directories to search instead of ldconfig + defaults).
# Sets NANOCHAT_HOST_DRIVER_LINKED and TRITON_LIBCUDA_PATH to the private directory when it linked something.
nanochat_link_host_driver() {
  _nc_want="${NANOCHAT_HOST_DRIVER:-auto}"
  [ "$_nc_want" = "off" ] && return 0
  if [ "$_nc_want" = "auto" ] && [ -z "${NANOCHAT_HOST_DRIVER_DIRS:-}" ] \
     && [ -e /run/opengl-driver/lib/libcuda.so.1 ]; then
    return 0
  fi
  _nc_src=""
  if [ "$_nc_want" != "auto" ]; then
    _nc_src="$_nc_want"
  elif [ -n "${NANOCHAT_HOST_DRIVER_DIRS:-}" ]; then
    for _nc_d in $NANOCHAT_HOST_DRIVER_DIRS; do
      if [ -e "$_nc_d/libcuda.so.1" ]; then _nc_src="$_nc_d"; break; fi
    done
  else
    # the HOST's ldconfig (glibc's from Nix would read a different cache)
    for _nc_ldc in /sbin/ldconfig /usr/sbin/ldconfig /sbin/ldconfig.real; do
      [ -x "$_nc_ldc" ] || continue
      _nc_lib=$("$_nc_ldc" -p 2>/dev/null | awk '$1 == "libcuda.so.1" && $2 ~ /64/ { print $NF; exit }')
      if [ -n "$_nc_lib" ] && [ -e "$_nc_lib" ]; then _nc_src="${_nc_lib%/*}"; break; fi
    done
    if [ -z "$_nc_src" ]; then
      for _nc_d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib \
                   /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/wsl/lib; do
        if [ -e "$_nc_d/libcuda.so.1" ]; then _nc_src="$_nc_d"; break; fi
      done
    fi
  fi
  # no driver on this machine (CPU box, CI): nothing to link; the doctor says "no GPU"
  [ -n "$_nc_src" ] && [ -e "$_nc_src/libcuda.so.1" ] || return 0

  _nc_dest="${XDG_CACHE_HOME:-$HOME/.cache}/nanochat/host-driver/$(uname -n)"
  mkdir -p "$_nc_dest" 2>/dev/null || return 0
  # relink every time: a driver upgrade changes the versioned file names
  find "$_nc_dest" -maxdepth 1 -type l -name 'lib*' -exec rm -f {} + 2>/dev/null
  for _nc_f in "$_nc_src"/libcuda.so* "$_nc_src"/libcudadebugger.so* "$_nc_src"/libnvidia-*.so* \
               "$_nc_src"/libdxcore.so*; do
    [ -e "$_nc_f" ] && ln -sfn "$_nc_f" "$_nc_dest/${_nc_f##*/}"
  done
  # Triton links its launchers with -lcuda, which needs the unversioned name (driver-only installs lack it)
  [ -e "$_nc_dest/libcuda.so" ] || ln -sfn libcuda.so.1 "$_nc_dest/libcuda.so"
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$_nc_dest:"*) ;;
    *) LD_LIBRARY_PATH="$_nc_dest${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; export LD_LIBRARY_PATH ;;
  esac
  NANOCHAT_HOST_DRIVER_LINKED="$_nc_dest"
  # Triton's own knob for libcuda's directory (honoured by the .#bin shell's triton-bin, nix/overlay.nix)
  TRITON_LIBCUDA_PATH="$_nc_dest"
  export NANOCHAT_HOST_DRIVER_LINKED TRITON_LIBCUDA_PATH
  unset _nc_want _nc_src _nc_d _nc_ldc _nc_lib _nc_dest _nc_f
  return 0
}
nanochat_link_host_driver
