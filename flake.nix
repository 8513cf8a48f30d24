{
  description = "nanochat: pinned dev shells with PyTorch built from source (CUDA 13, sm_120 by default) or from its CUDA wheel (.#bin)";

  # Binary caches offered to `nix develop`/`nix build` (Nix asks before using them unless
  # accept-flake-config is set; trusted users only). No public cache holds OUR torch (CUDA 13,
  # single capability): see docs/nix.md for the lab cache recipe, and add the lab cache here.
  nixConfig = {
    extra-substituters = [ "https://cache.nixos-cuda.org" ];
    extra-trusted-public-keys = [ "cache.nixos-cuda.org:74DUi4Ye579gUqzH4ziL9IyiJBlDpMRn9MBN8oNan9M=" ];
  };

  inputs = {
    # nixos-unstable, 2026-10-03: torch >= 2.12 that accepts CUDA 13; cudaPackages_13 (13.2)
    nixpkgs.url = "github:NixOS/nixpkgs/a7868a727837f3c09cee2ce0ca671c76b1589fed";

    # Optional torch source for the source-built CUDA shells. By default it is the same nixpkgs
    # tree (same pin, so the same store path: nothing more is downloaded), which means "use the
    # torch release nixpkgs pins". Build torch from a local PyTorch checkout (with submodules) with
    #   nix develop --override-input torch-src path:/path/to/pytorch
    # A real input, not `follows = "nixpkgs"`: Lix keeps an input that follows another one
    # following even under --override-input, which would ignore the checkout without a word.
    # Keep its rev equal to nixpkgs' (tests/test_nix.py checks it).
    torch-src = {
      url = "github:NixOS/nixpkgs/a7868a727837f3c09cee2ce0ca671c76b1589fed";
      flake = false;
    };
  };

  outputs = { self, nixpkgs, torch-src }:
    let
      inherit (nixpkgs) lib;
      linuxSystems = [ "x86_64-linux" "aarch64-linux" ];
      cpuOnlySystems = [ "aarch64-darwin" ];

      # the default torch-src is the nixpkgs tree itself: no checkout given
      torchSrc = if torch-src.outPath == nixpkgs.outPath then null else torch-src;

      # mkPkgs { system; cuda ? true; torch ? "source" | "bin"; cudaCapabilities ? [ "12.0" ];
      #          cudaPackageSet ? "cudaPackages_13"; }
      mkPkgs = import ./nix/pkgs.nix { inherit nixpkgs torchSrc; };
      mkShell = args: import ./nix/shell.nix args;

      # The default shell's GPU architecture: the RTX 5090 class (12.0) on x86_64; on aarch64 the
      # GB10 of DGX Spark (12.1), the desktop-class Blackwell of that platform. GH200 (9.0) users
      # take .#sm90 on either.
      defaultCapability = system: if system == "aarch64-linux" then "12.1" else "12.0";

      # Everything for one system. CUDA variants exist on Linux only.
      perSystem = system:
        let
          isLinux = builtins.elem system linuxSystems;
          # nixpkgs' torch-bin is PyTorch's CUDA wheel on x86_64-linux only; on aarch64-linux it is
          # the +cpu wheel (pkgs/development/python-modules/torch/bin/binary-hashes.nix)
          hasCudaWheel = system == "x86_64-linux";
          cpuPkgs = mkPkgs { inherit system; cuda = false; };
          cpuShell = mkShell { pkgs = cpuPkgs; name = "nanochat-cpu"; cuda = false; };
          cudaVariant = name: caps:
            let pkgs = mkPkgs { inherit system; cudaCapabilities = caps; };
            in {
              inherit pkgs;
              shell = mkShell { inherit pkgs name; cudaCapabilities = caps; };
            };
          native = cudaVariant "nanochat-cuda13-sm${builtins.replaceStrings [ "." ] [ "" ] (defaultCapability system)}"
            [ (defaultCapability system) ];
          sm120 = if defaultCapability system == "12.0" then native else cudaVariant "nanochat-cuda13-sm120" [ "12.0" ];
          sm90 = cudaVariant "nanochat-cuda13-sm90" [ "9.0" ];
          # PyTorch's prebuilt CUDA wheel (x86_64-linux): a shell in minutes, while the source
          # build runs elsewhere
          bin =
            let pkgs = mkPkgs { inherit system; torch = "bin"; };
            in { inherit pkgs; shell = mkShell { inherit pkgs; name = "nanochat-bin"; torchFromSource = false; }; };
          main = if isLinux then native else { pkgs = cpuPkgs; shell = cpuShell; };
        in
        {
          devShells = {
            default = main.shell;
            cpu = cpuShell;
          } // (if isLinux then { sm120 = sm120.shell; sm90 = sm90.shell; } else { })
          // (if hasCudaWheel then { bin = bin.shell; } else { });

          packages = {
            default = main.pkgs.python3Packages.nanochat;
            nanochat = main.pkgs.python3Packages.nanochat;
            nanochat-cpu = cpuPkgs.python3Packages.nanochat;
            rustbpe = cpuPkgs.python3Packages.rustbpe;
            torch = main.pkgs.python3Packages.torch;
            # the dev shells' Python environments: what the lab cache should hold
            python = main.shell.python;
            python-cpu = cpuShell.python;
          } // (if isLinux then { python-sm90 = sm90.shell.python; } else { })
          // (if hasCudaWheel then { python-bin = bin.shell.python; } else { });

          checks = {
            tests = import ./nix/checks.nix { pkgs = cpuPkgs; python = cpuShell.python; };
          };

          # mkPkgs for this system, for other flakes: nanochat.legacyPackages.${system}.mkPkgs { ... }
          # (legacyPackages, not a top-level `lib`: `nix flake check` knows that output)
          legacyPackages = {
            mkPkgs = args: mkPkgs ({ inherit system; } // args);
          };
        };

      all = lib.genAttrs (linuxSystems ++ cpuOnlySystems) perSystem;
      project = attr: builtins.mapAttrs (_system: outputs: outputs.${attr}) all;
    in
    {
      devShells = project "devShells";
      packages = project "packages";
      checks = project "checks";
      legacyPackages = project "legacyPackages";

      overlays.default = import ./nix/overlay.nix { inherit torchSrc; };
    };
}
