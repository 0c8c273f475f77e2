//! What the GEMM kernels compile to: a SASS (machine code) report made without a GPU.
//!
//! The program is compiled with the backend's own NVRTC options ([`kernels::compile`], with
//! `--ptxas-options=-v`), the cubin is disassembled with `cuobjdump -sass`, and for every GEMM entry
//! point the report gives the registers and spills (from the ptxas log), the total static instruction
//! count and a breakdown of the **main loop** — the k-tile loop — by instruction class, with the
//! figure that matters for a memory-bound decode GEMM: static instructions per IMMA.
//!
//! # Finding the main loop
//!
//! `cuobjdump` prints no labels, only absolute branch targets. Every `BRA` whose target is at or
//! before its own address closes a loop whose body is `[target, branch]`. The main loop is the
//! innermost such region that contains IMMA instructions: the k-tile loop contains the k32-step
//! loop, but that one is fully unrolled (`#pragma unroll` with constant bounds), so no smaller loop
//! holds an IMMA. Loops *inside* the main loop that hold no IMMA (runtime-trip-count copy loops) are
//! counted as `inner_loops`: a lean main loop has none. If the compiler ever duplicates the loop
//! (several disjoint innermost regions with IMMA), the one with the most IMMA is reported.
//!
//! Counts are static (each instruction of the region once, whatever branch skips it), which is the
//! proxy for issue slots per k-tile when the loop body is straight-line code.
//!
//! # Tools
//!
//! NVRTC as for [`kernels::compile`]; `cuobjdump` from `PATH`, `$CUDA_HOME/bin`, `/usr/local/cuda/bin`,
//! the `bin` folder beside a `nvidia/cu13/lib` (or `cu12`) entry of `LD_LIBRARY_PATH`, or the PyPI
//! `nvidia-cuda-cuobjdump` wheel found through `python3` (`site-packages/nvidia/cu13/bin`).
//! Their absence is [`SassError::Missing`], naming what to install.
//!
//! The parser ([`parse_cuobjdump`], [`main_loop`], [`InstrClass::of`]) works on text and needs none of
//! the tools; the example `sass_report` writes the markdown tables of `benches/SASS.md`.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernels;

/// Why a report could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SassError {
    /// A tool (NVRTC or cuobjdump) is not installed; the text says which and how to get it.
    Missing(String),
    /// The tools are there but something failed (compile error, disassembler error, unparsable output).
    Failed(String),
}

impl fmt::Display for SassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SassError::Missing(s) => write!(f, "missing tool: {s}"),
            SassError::Failed(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for SassError {}

/// One SASS instruction as `cuobjdump -sass` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Byte offset in the function (the `/*0a30*/` column).
    pub offset: u32,
    /// Guard predicate such as `@!P1`, if any.
    pub predicate: Option<String>,
    /// Opcode with its modifiers, e.g. `IMMA.16832.S8.S8`, `LDGSTS.E.BYPASS.128`.
    pub opcode: String,
    /// Operand text, without the trailing `;`.
    pub operands: String,
}

impl Instruction {
    /// The opcode without modifiers (`IMAD.WIDE.U32` → `IMAD`).
    pub fn base(&self) -> &str {
        self.opcode.split('.').next().unwrap_or("")
    }

    /// The class this instruction is counted in. An instruction guarded by `@!PT` (never true) is a
    /// no-op that still takes an issue slot (ptxas puts `@!PT LDS RZ, [RZ]` before some `LDGSTS`): it
    /// counts as [`InstrClass::Other`], not as what it would do.
    pub fn class(&self) -> InstrClass {
        if self.predicate.as_deref() == Some("@!PT") {
            InstrClass::Other
        } else {
            InstrClass::of(self.base())
        }
    }

    /// The absolute target of a `BRA` (the last `0x…` operand), if this is one.
    pub fn branch_target(&self) -> Option<u32> {
        if self.base() != "BRA" {
            return None;
        }
        let hex = self
            .operands
            .split(|c: char| c.is_whitespace() || c == ',' || c == '`' || c == '(')
            .rfind(|t| t.starts_with("0x") && t.len() > 2 && t[2..].chars().all(|c| c.is_ascii_hexdigit()))?;
        u32::from_str_radix(&hex[2..], 16).ok()
    }
}

/// One function's disassembly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SassFunction {
    /// The symbol name (`extern "C"` names are unmangled).
    pub name: String,
    /// Its instructions in address order.
    pub instructions: Vec<Instruction>,
}

/// Instruction classes of the main-loop breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InstrClass {
    /// `IMMA`: int8 tensor-core mma.
    Imma,
    /// `LDSM`: ldmatrix.
    Ldsm,
    /// `LDS`: plain shared-memory loads.
    Lds,
    /// `LDGSTS`: cp.async global → shared copies.
    Ldgsts,
    /// Integer and address arithmetic, vector and uniform datapath: `IMAD` (all forms), `IADD3`,
    /// `VIADD`, `LEA`, `SHF`, `LOP3`, `ISETP`, `SEL`, `PRMT`, `IMNMX`, `IABS`, `MOV`, `R2UR`, their
    /// `U…` twins, and the like. (The dequantization's masks, shifts and multiply-adds are in here too.)
    Int,
    /// `BAR`: barriers (`__syncthreads`).
    Bar,
    /// Everything else: branches, `DEPBAR`/`LDGDEPBAR` (cp.async wait/commit), `BSSY`/`BSYNC`,
    /// special-register reads, float ops, `NOP` and `@!PT`-guarded no-ops.
    Other,
}

impl InstrClass {
    /// Classifies an opcode without modifiers (see [`Instruction::base`]).
    pub fn of(base: &str) -> InstrClass {
        const INT: &str = "IMAD IMADSP IMUL IADD IADD3 IADD32I VIADD ISCADD LEA SHF SHL SHR LOP LOP3 LOP32I \
                           ISETP SEL PRMT IMNMX VIMNMX VIADDMNMX IABS MOV MOV32I BMSK SGXT POPC FLO BREV R2UR";
        let int = |op: &str| INT.split_whitespace().any(|o| o == op);
        match base {
            "IMMA" => InstrClass::Imma,
            "LDSM" => InstrClass::Ldsm,
            "LDS" => InstrClass::Lds,
            "LDGSTS" => InstrClass::Ldgsts,
            "BAR" => InstrClass::Bar,
            _ => {
                // Uniform-datapath twins: UIMAD, UIADD3, ULEA, USHF, ULOP3, UISETP, USEL, UMOV, …
                if int(base) || base.strip_prefix('U').is_some_and(int) {
                    InstrClass::Int
                } else {
                    InstrClass::Other
                }
            }
        }
    }
}

/// Parses `cuobjdump -sass` output into functions. Lines that are not instructions (headers, the
/// second encoding word of each instruction) are skipped.
pub fn parse_cuobjdump(text: &str) -> Vec<SassFunction> {
    let mut out: Vec<SassFunction> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("Function : ") {
            out.push(SassFunction { name: name.trim().to_string(), instructions: Vec::new() });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if let Some(ins) = parse_instruction(trimmed) {
            cur.instructions.push(ins);
        }
    }
    out
}

/// `/*0a30*/  @!P1 BRA 0x5f00 ;  /* 0x… */` → an instruction.
fn parse_instruction(line: &str) -> Option<Instruction> {
    let rest = line.strip_prefix("/*")?;
    let (addr, rest) = rest.split_once("*/")?;
    let offset = u32::from_str_radix(addr.trim(), 16).ok()?;
    // The instruction text ends at the ';' that precedes the encoding comment.
    let body = rest.split_once(';')?.0.trim();
    let mut tokens = body.splitn(2, char::is_whitespace);
    let mut first = tokens.next()?.to_string();
    let mut rest = tokens.next().unwrap_or("").trim().to_string();
    let predicate = if first.starts_with('@') {
        let p = first;
        let mut t = rest.splitn(2, char::is_whitespace);
        first = t.next()?.to_string();
        rest = t.next().unwrap_or("").trim().to_string();
        Some(p)
    } else {
        None
    };
    if first.is_empty() || !first.chars().next()?.is_ascii_uppercase() {
        return None;
    }
    Some(Instruction { offset, predicate, opcode: first, operands: rest })
}

/// A loop: the instructions `start..=end` (indices), `end` being the backward branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopRegion {
    /// Index of the first instruction (the branch target).
    pub start: usize,
    /// Index of the backward `BRA`.
    pub end: usize,
}

impl LoopRegion {
    /// Whether `other` lies inside this region (and is not this region).
    pub fn contains(&self, other: &LoopRegion) -> bool {
        self != other && self.start <= other.start && other.end <= self.end
    }

    /// The instructions of the region.
    pub fn slice<'a>(&self, f: &'a SassFunction) -> &'a [Instruction] {
        &f.instructions[self.start..=self.end]
    }
}

/// Every loop of `f`: one region per backward branch, in address order of the branches.
pub fn loops(f: &SassFunction) -> Vec<LoopRegion> {
    let mut out = Vec::new();
    for (end, ins) in f.instructions.iter().enumerate() {
        let Some(target) = ins.branch_target() else { continue };
        if target > ins.offset {
            continue;
        }
        if let Some(start) = f.instructions.iter().position(|i| i.offset == target) {
            out.push(LoopRegion { start, end });
        }
    }
    out
}

/// The main loop (see the module docs): the innermost loop holding IMMA instructions; among
/// several disjoint ones, the one with the most IMMA.
pub fn main_loop(f: &SassFunction) -> Option<LoopRegion> {
    let imma = |r: &LoopRegion| r.slice(f).iter().filter(|i| i.class() == InstrClass::Imma).count();
    let with_imma: Vec<LoopRegion> = loops(f).into_iter().filter(|r| imma(r) > 0).collect();
    let innermost = with_imma.iter().filter(|r| !with_imma.iter().any(|o| r.contains(o)));
    innermost.copied().max_by_key(|r| (imma(r), std::cmp::Reverse(r.start)))
}

/// Instruction counts by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounts {
    /// [`InstrClass::Imma`].
    pub imma: usize,
    /// [`InstrClass::Ldsm`].
    pub ldsm: usize,
    /// [`InstrClass::Lds`].
    pub lds: usize,
    /// [`InstrClass::Ldgsts`].
    pub ldgsts: usize,
    /// [`InstrClass::Int`].
    pub int: usize,
    /// [`InstrClass::Bar`].
    pub bar: usize,
    /// [`InstrClass::Other`].
    pub other: usize,
}

impl ClassCounts {
    /// Counts `instructions` by class.
    pub fn of(instructions: &[Instruction]) -> ClassCounts {
        let mut c = ClassCounts::default();
        for i in instructions {
            *match i.class() {
                InstrClass::Imma => &mut c.imma,
                InstrClass::Ldsm => &mut c.ldsm,
                InstrClass::Lds => &mut c.lds,
                InstrClass::Ldgsts => &mut c.ldgsts,
                InstrClass::Int => &mut c.int,
                InstrClass::Bar => &mut c.bar,
                InstrClass::Other => &mut c.other,
            } += 1;
        }
        c
    }

    /// All instructions counted.
    pub fn total(&self) -> usize {
        self.imma + self.ldsm + self.lds + self.ldgsts + self.int + self.bar + self.other
    }

    /// Instructions per IMMA (`None` without IMMA).
    pub fn per_imma(&self) -> Option<f64> {
        (self.imma > 0).then(|| self.total() as f64 / self.imma as f64)
    }
}

/// The main loop of one kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct MainLoop {
    /// Byte offsets of its first instruction and of its backward branch.
    pub offsets: (u32, u32),
    /// Its instructions by class.
    pub counts: ClassCounts,
    /// Loops nested inside it (none of them holds an IMMA).
    pub inner_loops: usize,
}

/// Analyses one function: its main loop, if it has one.
pub fn analyse(f: &SassFunction) -> Option<MainLoop> {
    let region = main_loop(f)?;
    let inner_loops = loops(f).iter().filter(|r| region.contains(r)).count();
    Some(MainLoop {
        offsets: (f.instructions[region.start].offset, f.instructions[region.end].offset),
        counts: ClassCounts::of(region.slice(f)),
        inner_loops,
    })
}

/// The report line of one GEMM entry point.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSass {
    /// Entry-point name.
    pub name: String,
    /// Registers per thread (ptxas).
    pub registers: u32,
    /// Spill store and spill load bytes (ptxas).
    pub spills: (u32, u32),
    /// Static instructions in the whole function.
    pub instructions: usize,
    /// The k-tile loop (`None` if no loop holds an IMMA).
    pub main_loop: Option<MainLoop>,
}

/// A report for one architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct SassReport {
    /// `sm_XY`.
    pub arch: String,
    /// NVRTC version, `major.minor`.
    pub nvrtc: String,
    /// One line per GEMM entry point, in the order of [`kernels::KERNELS`].
    pub kernels: Vec<KernelSass>,
}

/// Finds `cuobjdump` (see the module docs for where it looks).
pub fn find_cuobjdump() -> Result<PathBuf, SassError> {
    find_tool("cuobjdump")
}

fn find_tool(tool: &str) -> Result<PathBuf, SassError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            dirs.push(PathBuf::from(home).join("bin"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/bin"));
    // The PyPI wheels put binaries in nvidia/cu13/bin beside nvidia/cu13/lib (what LD_LIBRARY_PATH
    // names for NVRTC); the CUDA 12 wheel of cuobjdump uses nvidia/cuda_cuobjdump/bin.
    if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
        for lib in std::env::split_paths(&ld) {
            if let Some(parent) = lib.parent() {
                dirs.push(parent.join("bin"));
                if let Some(nvidia) = parent.parent() {
                    dirs.push(nvidia.join(format!("cuda_{tool}")).join("bin"));
                }
            }
        }
    }
    let found = |dirs: &[PathBuf]| dirs.iter().map(|d| d.join(tool)).find(|p| p.is_file());
    if let Some(p) = found(&dirs) {
        return Ok(p);
    }
    let pypi = python_nvidia_dirs()
        .into_iter()
        .flat_map(|n| ["cu13", "cu12", &format!("cuda_{tool}")].map(|sub| n.join(sub).join("bin")))
        .collect::<Vec<_>>();
    found(&pypi).ok_or_else(|| {
        SassError::Missing(format!(
            "`{tool}` not found on PATH, in $CUDA_HOME/bin, /usr/local/cuda/bin, beside an nvidia/*/lib \
             entry of LD_LIBRARY_PATH, or in python3's nvidia package: install the CUDA toolkit or \
             `pip install nvidia-cuda-{tool}`"
        ))
    })
}

/// The folders of python3's `nvidia` namespace package (where the PyPI CUDA wheels install).
fn python_nvidia_dirs() -> Vec<PathBuf> {
    let script = "import nvidia\nfor p in nvidia.__path__: print(p)";
    match Command::new("python3").args(["-c", script]).output() {
        Ok(o) if o.status.success() => {
            String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect()
        }
        _ => Vec::new(),
    }
}

/// Runs `cuobjdump -sass` on a cubin image (written to a temporary file first).
pub fn disassemble(cuobjdump: &Path, cubin: &[u8]) -> Result<String, SassError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "w4a8-sass-{}-{}.cubin",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, cubin)
        .map_err(|e| SassError::Failed(format!("writing {}: {e}", path.display())))?;
    let output = Command::new(cuobjdump).arg("-sass").arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let output = output.map_err(|e| SassError::Failed(format!("running {}: {e}", cuobjdump.display())))?;
    if !output.status.success() {
        return Err(SassError::Failed(format!(
            "{} -sass failed ({}): {}",
            cuobjdump.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn nvrtc_version() -> String {
    let v = std::panic::catch_unwind(|| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: NVRTC was probed by kernels::compile before this is called; nvrtcVersion only
        // writes the two integers.
        let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then(|| format!("{major}.{minor}"))
    });
    v.ok().flatten().unwrap_or_else(|| "unknown".into())
}

/// Compiles the program for `sm_{major}{minor}` with the backend's NVRTC options, disassembles it
/// and analyses every GEMM entry point.
pub fn report(major: i32, minor: i32) -> Result<SassReport, SassError> {
    kernels::probe_nvrtc().map_err(SassError::Missing)?;
    let cuobjdump = find_cuobjdump()?;
    let compiled = kernels::compile(major, minor, true).map_err(|e| match e {
        w4a8_core::Error::Unavailable { reason, .. } => SassError::Missing(reason),
        other => SassError::Failed(other.to_string()),
    })?;
    let usage = kernels::parse_ptxas_log(&compiled.log);
    let functions = parse_cuobjdump(&disassemble(&cuobjdump, &compiled.cubin)?);
    let mut out = Vec::new();
    for name in kernels::KERNELS.iter().filter(|n| n.starts_with("w4a8_gemm_")) {
        let f = functions.iter().find(|f| f.name == *name).ok_or_else(|| {
            SassError::Failed(format!("{name} missing from the cuobjdump output of sm_{major}{minor}"))
        })?;
        let u = usage.iter().find(|u| u.function == *name).ok_or_else(|| {
            SassError::Failed(format!("no ptxas report for {name} (sm_{major}{minor}):\n{}", compiled.log))
        })?;
        out.push(KernelSass {
            name: name.to_string(),
            registers: u.registers,
            spills: (u.spill_stores, u.spill_loads),
            instructions: f.instructions.len(),
            main_loop: analyse(f),
        });
    }
    Ok(SassReport { arch: format!("sm_{major}{minor}"), nvrtc: nvrtc_version(), kernels: out })
}

impl SassReport {
    /// The report as a markdown table (one row per kernel) with a one-line heading.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "**{}** (NVRTC {}, static SASS instruction counts)\n", self.arch, self.nvrtc);
        s.push_str(
            "| kernel | regs | spill st/ld B | SASS total | main loop | IMMA | LDSM | LDS | LDGSTS | int/addr \
             | BAR | other | inner loops | per IMMA |\n",
        );
        s.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for k in &self.kernels {
            let name = k.name.strip_prefix("w4a8_gemm_").unwrap_or(&k.name);
            let _ =
                write!(s, "| {name} | {} | {}/{} | {} ", k.registers, k.spills.0, k.spills.1, k.instructions);
            match &k.main_loop {
                None => s.push_str("| – | – | – | – | – | – | – | – | – | – |\n"),
                Some(m) => {
                    let c = &m.counts;
                    let per = c.per_imma().map_or("–".to_string(), |v| format!("{v:.1}"));
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | **{per}** |",
                        c.total(),
                        c.imma,
                        c.ldsm,
                        c.lds,
                        c.ldgsts,
                        c.int,
                        c.bar,
                        c.other,
                        m.inner_loops
                    );
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shortened sm_90 excerpt in cuobjdump's format: an outer loop 0x0030..0x0110 holding a
    /// copy loop 0x0050..0x0070 (no IMMA) and two IMMA; a later loop with no IMMA.
    const EXCERPT: &str = "
\tcode for sm_90
\t\tFunction : w4a8_gemm_x
\t.headerflags\t@\"EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)\"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b82 */
                                                                            /* 0x000ff00000000800 */
        /*0010*/                   S2R R0, SR_TID.X ;                      /* 0x0000000000007919 */
        /*0020*/                   IMAD.MOV.U32 R2, RZ, RZ, RZ ;           /* 0x000000ffff027224 */
        /*0030*/                   DEPBAR.LE SB0, 0x4 ;                    /* 0x000081000000791a */
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;           /* 0x0000000000007b1d */
        /*0050*/                   LDGSTS.E.BYPASS.128 [R11], desc[UR12][R34.64], !P0 ; /* 0x0 */
        /*0060*/                   IADD3 R4, R4, 0x100, RZ ;               /* 0x0 */
        /*0070*/              @!P3 BRA 0x50 ;                              /* 0xfffffff800fc9947 */
        /*0080*/                   LDGDEPBAR ;                             /* 0x00000000000079af */
        /*0090*/                   LDS.128 R8, [R3+UR4] ;                  /* 0x0 */
        /*00a0*/                   LDSM.16.M88.4 R32, [R32+UR7] ;          /* 0x0 */
        /*00b0*/                   LOP3.LUT R9, R8, 0xf0f0f0f0, RZ, 0xc0, !PT ; /* 0x0 */
        /*00c0*/                   IMMA.16832.S8.S8 R24, R32.reuse.ROW, R48.COL, R24 ; /* 0x0 */
        /*00d0*/                   IMMA.16832.S8.S8 R20, R32.ROW, R28.COL, R20 ; /* 0x0 */
        /*00e0*/                   UIADD3 UR4, UR4, 0x1, URZ ;             /* 0x0 */
        /*00f0*/                   ISETP.GE.AND P3, PT, R2, UR5, PT ;      /* 0x0 */
        /*0100*/              @!PT LDS RZ, [RZ] ;                          /* 0x0 */
        /*0110*/              @!P3 BRA 0x30 ;                              /* 0x0 */
        /*0120*/                   STG.E desc[UR4][R2.64], R5 ;            /* 0x0 */
        /*0130*/                   IADD3 R2, R2, 0x1, RZ ;                 /* 0x0 */
        /*0140*/               @P0 BRA 0x120 ;                             /* 0x0 */
        /*0150*/                   EXIT ;                                  /* 0x0 */
        /*0160*/                   BRA 0x160;                              /* 0x0 */
\t\t..........

\t\tFunction : other
        /*0000*/                   EXIT ;                                  /* 0x0 */
";

    #[test]
    fn instructions_are_parsed() {
        let fs = parse_cuobjdump(EXCERPT);
        assert_eq!(fs.len(), 2);
        assert_eq!(fs[0].name, "w4a8_gemm_x");
        assert_eq!(fs[0].instructions.len(), 23);
        assert_eq!(fs[1].instructions.len(), 1);
        let bra = &fs[0].instructions[7];
        assert_eq!(bra.offset, 0x70);
        assert_eq!(bra.predicate.as_deref(), Some("@!P3"));
        assert_eq!(bra.opcode, "BRA");
        assert_eq!(bra.branch_target(), Some(0x50));
        assert_eq!(fs[0].instructions[22].branch_target(), Some(0x160)); // "BRA 0x160;" (no space)
        let imma = &fs[0].instructions[12];
        assert_eq!((imma.opcode.as_str(), imma.base()), ("IMMA.16832.S8.S8", "IMMA"));
        assert_eq!(imma.operands, "R24, R32.reuse.ROW, R48.COL, R24");
        let nop = &fs[0].instructions[16];
        assert_eq!(
            (nop.predicate.as_deref(), nop.base(), nop.class()),
            (Some("@!PT"), "LDS", InstrClass::Other)
        );
    }

    #[test]
    fn opcodes_are_classified() {
        use InstrClass::*;
        for (op, class) in [
            ("IMMA", Imma),
            ("LDSM", Ldsm),
            ("LDS", Lds),
            ("LDGSTS", Ldgsts),
            ("BAR", Bar),
            ("IMAD", Int),
            ("VIADD", Int),
            ("USEL", Int),
            ("ULDC", Other),
            ("CS2R", Other),
            ("UIMAD", Int),
            ("LEA", Int),
            ("ULEA", Int),
            ("R2UR", Int),
            ("LOP3", Int),
            ("LDG", Other),
            ("LDGDEPBAR", Other),
            ("DEPBAR", Other),
            ("BRA", Other),
            ("UBRA", Other),
            ("FMUL", Other),
        ] {
            assert_eq!(InstrClass::of(op), class, "{op}");
        }
    }

    #[test]
    fn the_main_loop_is_the_innermost_loop_with_imma() {
        let f = &parse_cuobjdump(EXCERPT)[0];
        assert_eq!(loops(f).len(), 4); // 0x50..0x70, 0x30..0x110, 0x120..0x140, 0x160..0x160
        let r = main_loop(f).expect("a main loop");
        assert_eq!((f.instructions[r.start].offset, f.instructions[r.end].offset), (0x30, 0x110));
        let m = analyse(f).unwrap();
        assert_eq!(m.inner_loops, 1);
        let c = m.counts;
        assert_eq!((c.imma, c.ldsm, c.lds, c.ldgsts, c.int, c.bar, c.other), (2, 1, 1, 1, 4, 1, 5), "{c:?}");
        assert_eq!(c.total(), 15);
        assert_eq!(c.per_imma(), Some(7.5));
        assert_eq!(analyse(&parse_cuobjdump(EXCERPT)[1]), None);
    }

    #[test]
    fn markdown_has_one_row_per_kernel() {
        let f = &parse_cuobjdump(EXCERPT)[0];
        let r = SassReport {
            arch: "sm_90".into(),
            nvrtc: "13.5".into(),
            kernels: vec![
                KernelSass {
                    name: "w4a8_gemm_x".into(),
                    registers: 64,
                    spills: (0, 0),
                    instructions: 23,
                    main_loop: analyse(f),
                },
                KernelSass {
                    name: "w4a8_gemm_y".into(),
                    registers: 8,
                    spills: (0, 0),
                    instructions: 1,
                    main_loop: None,
                },
            ],
        };
        let md = r.markdown();
        assert!(md.contains("| x | 64 | 0/0 | 23 | 15 | 2 | 1 | 1 | 1 | 4 | 1 | 5 | 1 | **7.5** |"), "{md}");
        assert!(md.contains("| y | 8 | 0/0 | 1 | – |"), "{md}");
    }
}
