//! The cp.async ring buffer of `w4a8_gemm_body`, as a state machine over its shared-memory slots.
//!
//! The kernel keeps `STAGES` slots of shared memory. Its schedule: a prologue issues the copies of
//! k-tiles 0..STAGES−2 (one commit group each); iteration `it` waits until at most STAGES−2 groups
//! are in flight, passes a barrier, refills slot `(it + STAGES − 1) % STAGES` with k-tile
//! `it + STAGES − 1` (the slot read in iteration `it − 1`), and then reads slot `it % STAGES`.
//! After the loop it drains every group and, when several warps share K, reuses the slots for the
//! k-warp reduction behind one more barrier.
//!
//! Each slot here is Free, InFlight (copies issued, group not yet retired by a wait), Ready (landed,
//! not yet read) or Reading (read in this iteration; other warps may still be reading it until the
//! next barrier). The rules a correct schedule keeps, checked on every step:
//! - a copy is issued only into a Free slot (else it overwrites data some warp has not read yet);
//! - a read finds its k-tile Ready or Reading (else it reads a copy still in flight, or a stale tile);
//! - only a barrier frees the slots read in the previous iteration;
//! - the reduction overlays the slots only when nothing is in flight and a barrier has freed them.
//!
//! A copy's bytes land in the slot's image only when its group retires, so a schedule that broke a
//! rule could not produce the right answer by luck: the data path goes through this model too.

use std::fmt;

/// The schedule's three parameters; [`Schedule::kernel`] is what `w4a8_gemm.cu` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Pipeline slots (`STAGES`).
    pub stages: usize,
    /// k-tiles issued before the loop (`STAGES − 1`).
    pub prologue: usize,
    /// Groups a `cp.async.wait_group` leaves in flight at the top of each iteration (`STAGES − 2`).
    pub wait_pending: usize,
    /// How far ahead the refill of iteration `it` reaches: k-tile `it + ahead`, slot
    /// `(it + ahead) % stages` (`STAGES − 1`).
    pub refill_ahead: usize,
}

impl Schedule {
    /// The kernel's schedule for `stages` slots.
    pub fn kernel(stages: usize) -> Self {
        Schedule { stages, prologue: stages - 1, wait_pending: stages - 2, refill_ahead: stages - 1 }
    }
}

/// A broken pipeline rule: which one, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineFault(pub String);

impl fmt::Display for PipelineFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    InFlight { kt: usize, group: usize },
    Ready { kt: usize },
    Reading { kt: usize },
}

/// The slots of one block, with the bytes of each (`T`: the stage image the data path uses).
pub struct Pipeline<T> {
    slots: Vec<Slot>,
    images: Vec<Option<T>>,
    pending: Vec<Option<T>>,
    /// Commit groups closed so far (`cp.async.commit_group` count).
    committed: usize,
    /// Copy issues since the last commit belong to group `committed`.
    log: Vec<String>,
}

impl<T> Pipeline<T> {
    /// `stages` Free slots, nothing in flight.
    pub fn new(stages: usize) -> Self {
        Pipeline {
            slots: vec![Slot::Free; stages],
            images: (0..stages).map(|_| None).collect(),
            pending: (0..stages).map(|_| None).collect(),
            committed: 0,
            log: Vec::new(),
        }
    }

    fn fault(&self, what: String) -> PipelineFault {
        let tail = self.log.iter().rev().take(6).rev().cloned().collect::<Vec<_>>().join("; ");
        PipelineFault(format!("{what} (slots {:?}; last steps: {tail})", self.slots))
    }

    /// `w4a8_load_stage(slot, kt)`: the copies of k-tile `kt` (bytes `data`) issued into `slot`.
    pub fn issue(&mut self, slot: usize, kt: usize, data: T) -> Result<(), PipelineFault> {
        self.log.push(format!("issue kt {kt} → slot {slot}"));
        if self.slots[slot] != Slot::Free {
            return Err(self.fault(format!(
                "k-tile {kt} copied into slot {slot} while it is {:?}: overwritten before it was read",
                self.slots[slot]
            )));
        }
        self.slots[slot] = Slot::InFlight { kt, group: self.committed };
        self.pending[slot] = Some(data);
        Ok(())
    }

    /// `cp.async.commit_group` (an empty group when nothing was issued since the last one).
    pub fn commit(&mut self) {
        self.log.push("commit".into());
        self.committed += 1;
    }

    /// `cp.async.wait_group n`: every group but the newest `n` has landed.
    pub fn wait(&mut self, n: usize) {
        self.log.push(format!("wait {n}"));
        let done = self.committed.saturating_sub(n);
        for s in 0..self.slots.len() {
            if let Slot::InFlight { kt, group } = self.slots[s]
                && group < done
            {
                self.slots[s] = Slot::Ready { kt };
                self.images[s] = self.pending[s].take();
            }
        }
    }

    /// `__syncthreads()`: every warp has finished reading the slots of the previous iteration.
    pub fn barrier(&mut self) {
        self.log.push("barrier".into());
        for s in self.slots.iter_mut() {
            if let Slot::Reading { .. } = s {
                *s = Slot::Free;
            }
        }
    }

    /// The warps read k-tile `kt` from `slot`.
    pub fn read(&mut self, slot: usize, kt: usize) -> Result<&T, PipelineFault> {
        self.log.push(format!("read kt {kt} ← slot {slot}"));
        match self.slots[slot] {
            Slot::Ready { kt: k } | Slot::Reading { kt: k } if k == kt => {
                self.slots[slot] = Slot::Reading { kt };
                Ok(self.images[slot].as_ref().expect("a Ready slot has landed bytes"))
            }
            other => Err(self.fault(format!("k-tile {kt} read from slot {slot} while it is {other:?}"))),
        }
    }

    /// The shared memory is reused for something else (the k-warp reduction): nothing may be in
    /// flight and no slot may still be read by a warp that has not passed a barrier.
    pub fn reuse(&mut self) -> Result<(), PipelineFault> {
        self.log.push("reuse shared memory".into());
        match self.slots.iter().position(|s| matches!(s, Slot::InFlight { .. } | Slot::Reading { .. })) {
            Some(s) => Err(self.fault(format!("shared memory reused while slot {s} is {:?}", self.slots[s]))),
            None => Ok(()),
        }
    }
}

/// Runs `schedule` over k-tiles `kt_begin..kt_end` exactly as the kernel's loop does, calling
/// `load(kt)` for the bytes of each issued k-tile and `compute(kt, &bytes)` for each read.
/// `reduction`: the block reuses the slots afterwards (WARPS_K > 1).
pub fn run<T>(
    schedule: Schedule,
    (kt_begin, kt_end): (usize, usize),
    reduction: bool,
    mut load: impl FnMut(usize) -> T,
    mut compute: impl FnMut(usize, &T),
) -> Result<(), PipelineFault> {
    let mut pipe = Pipeline::new(schedule.stages);
    for p in 0..schedule.prologue {
        if kt_begin + p < kt_end {
            pipe.issue(p, kt_begin + p, load(kt_begin + p))?;
        }
        pipe.commit();
    }
    for kt in kt_begin..kt_end {
        let it = kt - kt_begin;
        pipe.wait(schedule.wait_pending);
        pipe.barrier();
        let nk = kt + schedule.refill_ahead;
        if nk < kt_end {
            pipe.issue((it + schedule.refill_ahead) % schedule.stages, nk, load(nk))?;
        }
        pipe.commit();
        compute(kt, pipe.read(it % schedule.stages, kt)?);
    }
    pipe.wait(0);
    if reduction {
        pipe.barrier();
        pipe.reuse()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_source_runs_this_schedule() {
        // Whitespace-free fragments of w4a8_gemm_body that fix the three parameters: a change to
        // the kernel's schedule must come with a change to Schedule::kernel (and this test).
        let src: String = crate::kernels::GEMM_SOURCE.chars().filter(|c| !c.is_whitespace()).collect();
        for fragment in [
            "for(intp=0;p<STAGES-1;++p)",                      // prologue: STAGES − 1 k-tiles
            "w4a8_cp_async_wait<STAGES-2>();__syncthreads();", // wait, then the barrier
            "intnk=kt+STAGES-1;",                              // refill reaches STAGES − 1 ahead …
            "(it+STAGES-1)%STAGES",                            // … into the slot read last iteration
            "(it%STAGES)*C::STAGE",                            // compute reads slot it % STAGES
            "w4a8_cp_async_wait<0>();",                        // drain before the reduction
        ] {
            assert!(src.contains(fragment), "w4a8_gemm.cu no longer contains `{fragment}`");
        }
    }

    /// The schedule over `kts` k-tiles without data; `Ok` with the k-tiles computed, in order.
    fn simulate(s: Schedule, kts: usize, reduction: bool) -> Result<Vec<usize>, PipelineFault> {
        let mut seen = Vec::new();
        run(
            s,
            (0, kts),
            reduction,
            |kt| kt,
            |kt, &data| {
                assert_eq!(kt, data, "slot image holds another k-tile");
                seen.push(kt)
            },
        )?;
        Ok(seen)
    }

    #[test]
    fn the_kernel_schedule_recycles_every_slot_safely() {
        for stages in 2..=8 {
            for kts in 1..=4 * stages + 3 {
                let order = simulate(Schedule::kernel(stages), kts, true).unwrap();
                assert_eq!(order, (0..kts).collect::<Vec<_>>(), "stages {stages}, {kts} k-tiles");
            }
        }
    }

    #[test]
    fn a_refill_into_the_slot_about_to_be_read_is_caught() {
        // Reaching one tile further lands in slot it % STAGES: Ready and not yet read.
        let s = Schedule { refill_ahead: 4, ..Schedule::kernel(4) };
        let e = simulate(s, 8, false).unwrap_err();
        assert!(e.0.contains("overwritten before it was read"), "{e}");
    }

    #[test]
    fn a_shallow_wait_reads_a_copy_in_flight() {
        let s = Schedule { wait_pending: 3, ..Schedule::kernel(4) };
        let e = simulate(s, 8, false).unwrap_err();
        assert!(e.0.contains("read from slot 0 while it is InFlight"), "{e}");
    }

    #[test]
    fn a_refill_before_the_barrier_overwrites_a_slot_other_warps_read() {
        // Issue the refill first, then the barrier: slot (it-1) % S is still Reading.
        let mut pipe = Pipeline::new(3);
        pipe.issue(0, 0, ()).unwrap();
        pipe.commit();
        pipe.issue(1, 1, ()).unwrap();
        pipe.commit();
        pipe.wait(1);
        pipe.barrier();
        pipe.issue(2, 2, ()).unwrap();
        pipe.commit();
        pipe.read(0, 0).unwrap();
        pipe.wait(1);
        // The barrier is missing here.
        let e = pipe.issue(0, 3, ()).unwrap_err();
        assert!(e.0.contains("Reading"), "{e}");
    }

    #[test]
    fn an_extra_prologue_tile_or_a_missing_drain_is_caught() {
        let s = Schedule { prologue: 4, ..Schedule::kernel(4) };
        assert!(simulate(s, 8, false).is_err());
        // Reusing the slots with copies still in flight: drain skipped (wait leaves groups pending).
        let mut pipe = Pipeline::new(2);
        pipe.issue(0, 0, ()).unwrap();
        pipe.commit();
        pipe.barrier();
        assert!(pipe.reuse().unwrap_err().0.contains("InFlight"));
    }
}
