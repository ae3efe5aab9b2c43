#!/usr/bin/env bash
# Packs everything a Linux x64 GPU machine without .NET needs to run the CUDA tests and `diffu bench`
# into one archive, out/gpu/diffusharp-gpu.tar.xz: the .NET runtime this SDK has, framework-dependent
# publishes of the CLI and of the test assembly, the test fixtures and the shared data the tests read.
# On that machine: tar xJf diffusharp-gpu.tar.xz && diffusharp-gpu/run.sh   (see tools/gpu/README.md)
#
# Layout inside (the tests find the repository root by Engine.sln and the data at ../shared/data):
#   diffusharp-gpu/run.sh, diffu, README.md, BUILD   entry points and where the build came from
#   diffusharp-gpu/dotnet/                           dotnet host, host/fxr, shared/Microsoft.NETCore.App
#   diffusharp-gpu/repo/Engine.sln, tests/fixtures, tools/bench, app/ (diffu.dll, DiffuSharp.Tests.dll)
#   diffusharp-gpu/shared/data/                      the parts of ../shared/data the tests read
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
limit_bytes=60000000   # what travels to the GPU machine is capped at 64 MiB; keep a margin
archive="$repo/out/gpu/diffusharp-gpu.tar.xz"
stage="$repo/out/gpu/stage"
bundle="$stage/diffusharp-gpu"

die() { echo "bundle.sh: $*" >&2; exit 1; }
step() { echo "== $*"; }

command -v dotnet >/dev/null || die "the .NET SDK (dotnet) is needed to build the bundle"
command -v xz >/dev/null || die "xz is needed to pack the bundle"
data="$repo/../shared/data"
[ -d "$data" ] || die "shared data not found at $data"
data=$(cd "$data" && pwd)

rm -rf "$stage" "$archive"
mkdir -p "$bundle/repo" "$bundle/shared/data"
app="$bundle/repo/app"

# ---- the programs ---------------------------------------------------------------------------------
# Both publishes go into one folder: the tests reference the CLI, so they share every dependency, and
# each keeps its own deps.json and runtimeconfig.json.
step "publishing diffu and DiffuSharp.Tests (Release, framework-dependent)"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet publish "$repo/tools/Diffu/Diffu.csproj" -c Release -o "$app" -v quiet -nologo
dotnet publish "$repo/tests/DiffuSharp.Tests.csproj" -c Release -o "$app" -v quiet -nologo
[ -f "$app/diffu.dll" ] && [ -f "$app/DiffuSharp.Tests.dll" ] || die "publish did not produce diffu.dll and DiffuSharp.Tests.dll in $app"

# The target is linux-x64: native assets of other platforms go (the host only loads the ones for its
# own RID, so the deps.json entries for the others may point at nothing). vstest's adapter, the code
# coverage collector and their native profilers are for `dotnet test` only and are not in deps.json.
# The apphosts go too: the launchers run the dlls with the bundled dotnet.
step "dropping what the GPU machine does not load"
find "$app/runtimes" -mindepth 1 -maxdepth 1 ! -name linux-x64 -exec rm -rf {} +
rm -rf "$app"/{CodeCoverage,x86,x64,arm64,alpine,ubuntu,macos}
rm -f "$app"/Microsoft.CodeCoverage.* "$app"/Microsoft.VisualStudio.TraceDataCollector.dll "$app"/Microsoft.DiaSymReader.dll \
      "$app"/Mono.Cecil*.dll "$app"/NUnit3.TestAdapter.* "$app"/nunit.engine*.dll "$app"/testcentric.engine.metadata.dll \
      "$app"/ThirdPartyNotices.txt "$app"/diffu "$app"/DiffuSharp.Tests
# Our own pdbs stay: a failure on the GPU machine then has file and line numbers in its stack trace.
find "$app" -name '*.pdb' ! -name 'DiffuSharp.*.pdb' ! -name 'diffu.pdb' -delete

# ---- the .NET runtime the build targets -------------------------------------------------------------
tfm_major=$(sed -n 's:.*<TargetFramework>net\([0-9]*\)\..*</TargetFramework>.*:\1:p' "$repo/Directory.Build.props")
[ -n "$tfm_major" ] || die "no <TargetFramework>netN.M</TargetFramework> in Directory.Build.props"
# Lines look like: Microsoft.NETCore.App 10.0.12 [/usr/share/dotnet/shared/Microsoft.NETCore.App]
runtime_line=$(dotnet --list-runtimes | awk -v m="$tfm_major" '$1 == "Microsoft.NETCore.App" && index($2, m ".") == 1' | sort -V -k2,2 | tail -1)
[ -n "$runtime_line" ] || die "dotnet --list-runtimes has no Microsoft.NETCore.App $tfm_major.x"
runtime_version=$(awk '{ print $2 }' <<<"$runtime_line")
runtime_shared=$(sed 's/.*\[\(.*\)\]/\1/' <<<"$runtime_line")
dotnet_root=$(cd "$runtime_shared/../.." && pwd)
fxr=$(ls "$dotnet_root/host/fxr" | sort -V | tail -1)
step "copying the .NET runtime $runtime_version (host/fxr $fxr) from $dotnet_root"
mkdir -p "$bundle/dotnet/host/fxr" "$bundle/dotnet/shared/Microsoft.NETCore.App"
cp "$dotnet_root/dotnet" "$bundle/dotnet/"
cp "$dotnet_root"/LICENSE.txt "$dotnet_root"/ThirdPartyNotices.txt "$bundle/dotnet/" 2>/dev/null || true
cp -r "$dotnet_root/host/fxr/$fxr" "$bundle/dotnet/host/fxr/"
cp -r "$runtime_shared/$runtime_version" "$bundle/dotnet/shared/Microsoft.NETCore.App/"

# ---- what the tests read ----------------------------------------------------------------------------
step "copying fixtures, bench scripts and shared data"
cp "$repo/Engine.sln" "$bundle/repo/"
mkdir -p "$bundle/repo/tests"
cp -r "$repo/tests/fixtures" "$bundle/repo/tests/"
if [ -d "$repo/tools/bench" ]; then
  mkdir -p "$bundle/repo/tools"
  cp -r "$repo/tools/bench" "$bundle/repo/tools/"
  find "$bundle/repo/tools/bench" -name __pycache__ -prune -exec rm -rf {} +
fi
# The files the device tests read under TestUtil.SharedData (grep SharedData tests/) and HellaSwag for the bench's
# eval row; the other evaluation sets and the rest of the corpora are read by CPU-only tests.
for part in MANIFEST.md tokenizers/gpt2 llama2c corpora/tinyshakespeare_input.txt corpora/tinystories/train_v2_head.txt eval/hellaswag; do
  [ -e "$data/$part" ] || die "shared data is missing $data/$part"
  mkdir -p "$bundle/shared/data/$(dirname "$part")"
  cp -r "$data/$part" "$bundle/shared/data/$part"
done

# ---- entry points -----------------------------------------------------------------------------------
cp "$repo/tools/gpu/run.sh" "$bundle/run.sh"
cp "$repo/tools/gpu/README.md" "$bundle/README.md"
cat >"$bundle/diffu" <<'EOF'
#!/usr/bin/env bash
# The diffu CLI on the bundled .NET runtime: diffusharp-gpu/diffu info PATH, diffu bench --device cuda, ...
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DOTNET_ROOT="$here/dotnet" DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
exec "$here/dotnet/dotnet" "$here/repo/app/diffu.dll" "$@"
EOF
chmod +x "$bundle/run.sh" "$bundle/diffu" "$bundle/dotnet/dotnet"
{
  echo "commit $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)$([ -z "$(git -C "$repo" status --porcelain 2>/dev/null)" ] || echo ' (with uncommitted changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
  echo "runtime Microsoft.NETCore.App $runtime_version, host/fxr $fxr"
} >"$bundle/BUILD"

# ---- pack -------------------------------------------------------------------------------------------
step "packing $(du -sh "$bundle" | cut -f1) into $archive"
du -sh "$bundle"/dotnet "$bundle"/repo/app "$bundle"/repo/tests "$bundle"/shared | sed 's:'"$bundle"/'::; s/^/   /'
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner -cf - diffusharp-gpu | xz -9 -T0 >"$archive"
rm -rf "$stage"
size=$(stat -c %s "$archive")
echo "archive: $archive"
echo "size: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }'))"
[ "$size" -le "$limit_bytes" ] || die "the archive is $size bytes, over the $limit_bytes limit: see what takes space above"
