//! The CUDA kernel timer: CUDA events around runs queued back to back behind a host-function gate.
//!
//! Events recorded around one launch measure the launch too when queueing a run (cudarc's event
//! bookkeeping, cuBLAS's host work, the driver) takes longer than running it — the usual case at
//! decode sizes — because the GPU then idles between runs. Here a host function first holds the
//! stream; the host queues the start event, the runs and the stop event behind it, then releases it,
//! so the GPU finds the whole batch queued and the events bracket GPU work only. A gate that had to
//! give up waiting (the host could not queue in time) is detected and its piece timed again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use cudarc::driver::{CudaEvent, CudaStream};
use w4a8_core::{BackendKind, Error, Result};

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Backend { backend: BackendKind::Cuda, message: format!("{what}: {e:?}") }
}

/// Most runs enqueued behind one [`EventTimer`] gate. Each call queues its kernel launches plus an
/// event wait and record per buffer argument (cudarc's cross-stream tracking), a few dozen entries;
/// the driver's launch queue holds about a thousand, and an enqueue that finds it full blocks on a
/// stream the gate holds (which the gate's timeout turns into a retry with fewer runs).
pub const MAX_GATED_RUNS: usize = 16;

/// How long a gate holds its stream at most. Enqueueing [`MAX_GATED_RUNS`] runs takes well under a
/// millisecond; a gate that reaches this limit means the enqueue blocked (a full launch queue, or a
/// call that synchronizes), so the batch is timed again in smaller pieces.
const GATE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the gate's host function owns while it holds the stream.
struct GatePayload {
    release: Receiver<()>,
    timed_out: Arc<AtomicBool>,
}

/// The gate's host function: blocks the stream until the host opens the gate (or drops it, or
/// [`GATE_TIMEOUT`] passes) and records whether it gave up on its own. Makes no CUDA call.
unsafe extern "C" fn hold_stream(data: *mut std::ffi::c_void) {
    // SAFETY: `data` is the Box<GatePayload> leaked by StreamGate::close for this one call; the
    // driver calls a host function exactly once, so ownership comes back here exactly once.
    let payload = unsafe { Box::from_raw(data.cast::<GatePayload>()) };
    let timed_out = matches!(payload.release.recv_timeout(GATE_TIMEOUT), Err(RecvTimeoutError::Timeout));
    payload.timed_out.store(timed_out, Ordering::Release);
}

/// A host function queued on a stream that holds everything enqueued after it until
/// [`StreamGate::open`]: the work behind it then runs back to back, however slowly the host queued
/// it. Dropping the gate unopened opens it too (error paths never leave the stream held).
struct StreamGate {
    release: Option<Sender<()>>,
    timed_out: Arc<AtomicBool>,
}

impl StreamGate {
    fn close(stream: &CudaStream) -> Result<Self> {
        let (release, wait) = mpsc::channel();
        let timed_out = Arc::new(AtomicBool::new(false));
        let payload = Box::into_raw(Box::new(GatePayload { release: wait, timed_out: timed_out.clone() }));
        stream.context().bind_to_thread().map_err(|e| cuda_err("cuCtxSetCurrent", e))?;
        // SAFETY: the stream is live (we hold it) and its context is current; `hold_stream` takes
        // ownership of `payload` when the driver calls it, and makes no CUDA call.
        let queued = unsafe {
            cudarc::driver::result::stream::launch_host_function(
                stream.cu_stream(),
                hold_stream,
                payload.cast(),
            )
        };
        if let Err(e) = queued {
            // SAFETY: the launch failed, so the host function will never run: the payload is ours.
            drop(unsafe { Box::from_raw(payload) });
            return Err(cuda_err("cuLaunchHostFunc", e));
        }
        Ok(StreamGate { release: Some(release), timed_out })
    }

    /// Lets the stream go on. Returns the flag the host function sets if it gave up waiting: read it
    /// only once the stream has passed the gate (after synchronizing on later work).
    fn open(mut self) -> Arc<AtomicBool> {
        if let Some(release) = self.release.take() {
            // A send fails only if the host function already returned (timed out): nothing to do.
            let _ = release.send(());
        }
        self.timed_out.clone()
    }
}

impl Drop for StreamGate {
    fn drop(&mut self) {
        // Dropping the sender disconnects the channel: the host function returns at once.
        self.release.take();
    }
}

/// Device time of work queued on a stream, between two CUDA events.
///
/// [`EventTimer::time_runs`] is the kernel timer of the benchmark: the runs go behind a gate (a
/// host function that holds the stream) with the start event, so they execute back to back once it
/// opens and the events bracket GPU work only — host launch latency, cudarc's event bookkeeping and
/// library overhead are outside, as long as the host queued everything before the gate opened
/// (which it checks).
pub struct EventTimer {
    start: CudaEvent,
    stop: CudaEvent,
    stream: Arc<CudaStream>,
    /// Runs per gate; halved (for the rest of this timer's life) whenever a gate times out.
    gated_runs: AtomicUsize,
}

impl EventTimer {
    /// Two timing-enabled events on `stream`'s context.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context();
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        Ok(EventTimer {
            start: ctx.new_event(flags).map_err(|e| cuda_err("cuEventCreate", e))?,
            stop: ctx.new_event(flags).map_err(|e| cuda_err("cuEventCreate", e))?,
            stream,
            gated_runs: AtomicUsize::new(MAX_GATED_RUNS),
        })
    }

    /// Runs per gate now: [`MAX_GATED_RUNS`] unless a gate has timed out.
    pub fn gated_runs(&self) -> usize {
        self.gated_runs.load(Ordering::Relaxed)
    }

    /// Mean device time per run, in seconds, of `enqueue(0) … enqueue(runs − 1)` (each queues one
    /// run on this timer's stream and must not wait for the device) executed back to back.
    ///
    /// The runs go in pieces of [`EventTimer::gated_runs`]: gate closed, start event, the piece,
    /// stop event, gate opened; the event times of the pieces are summed. A piece whose gate timed
    /// out (the host could not queue it all in time) is discarded and timed again in halves.
    pub fn time_runs(&self, runs: usize, mut enqueue: impl FnMut(usize) -> Result<()>) -> Result<f64> {
        let runs = runs.max(1);
        let (mut done, mut total_ms) = (0, 0.0f64);
        while done < runs {
            let piece = self.gated_runs().min(runs - done);
            match self.time_gated(done..done + piece, &mut enqueue)? {
                Some(ms) => {
                    total_ms += ms as f64;
                    done += piece;
                }
                None if piece > 1 => {
                    self.gated_runs.store((piece / 2).max(1), Ordering::Relaxed);
                }
                None => {
                    return Err(Error::Backend {
                        backend: BackendKind::Cuda,
                        message: format!(
                            "CUDA event timer: one run did not finish queueing within {GATE_TIMEOUT:?} of \
                             the stream gate: the enqueue blocks on the device (a synchronizing call?)"
                        ),
                    });
                }
            }
        }
        Ok(total_ms * 1e-3 / runs as f64)
    }

    /// One gated piece: its device time in ms, or `None` if the gate timed out before the host
    /// had queued it all (the time then includes host gaps and is thrown away).
    fn time_gated(
        &self,
        indices: std::ops::Range<usize>,
        enqueue: &mut impl FnMut(usize) -> Result<()>,
    ) -> Result<Option<f32>> {
        let gate = StreamGate::close(&self.stream)?;
        self.start.record(&self.stream).map_err(|e| cuda_err("cuEventRecord", e))?;
        for i in indices {
            enqueue(i)?;
        }
        self.stop.record(&self.stream).map_err(|e| cuda_err("cuEventRecord", e))?;
        let timed_out = gate.open();
        // elapsed_ms waits for both events, hence for the host function before them.
        let ms = self.start.elapsed_ms(&self.stop).map_err(|e| cuda_err("cuEventElapsedTime", e))?;
        Ok((!timed_out.load(Ordering::Acquire)).then_some(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backend's stream, or `None` (skipped) without a CUDA device; `W4A8_REQUIRE=cuda` makes
    /// a missing device a failure.
    fn stream_or_skip() -> Option<(w4a8_cuda::CudaBackend, Arc<CudaStream>)> {
        match w4a8_cuda::CudaBackend::new() {
            Ok(b) => {
                let s = b.stream().clone();
                Some((b, s))
            }
            Err(e) => {
                let required =
                    std::env::var("W4A8_REQUIRE").is_ok_and(|v| v.split(',').any(|b| b.trim() == "cuda"));
                assert!(!required, "W4A8_REQUIRE names cuda but: {e}");
                eprintln!("SKIPPED: CUDA unavailable: {e}");
                None
            }
        }
    }

    #[test]
    fn gated_runs_keep_host_gaps_out_of_the_kernel_time() {
        let Some((_backend, stream)) = stream_or_skip() else { return };
        let src = stream.alloc_zeros::<u8>(1 << 20).unwrap();
        let mut dst = stream.alloc_zeros::<u8>(1 << 20).unwrap();
        let timer = EventTimer::new(stream.clone()).unwrap();
        // The host sleeps 2 ms after queueing each 1 MiB copy (microseconds of GPU work): behind the
        // gate the copies still run back to back, so the per-run time stays far below the gap.
        let per_run = timer
            .time_runs(8, |_| {
                stream.memcpy_dtod(&src, &mut dst).map_err(|e| cuda_err("copy", e))?;
                std::thread::sleep(Duration::from_millis(2));
                Ok(())
            })
            .unwrap();
        assert!(per_run > 0.0 && per_run < 0.5e-3, "{per_run} s per run");
        assert_eq!(timer.gated_runs(), MAX_GATED_RUNS);
    }

    #[test]
    fn a_dropped_gate_releases_its_stream() {
        let Some((_backend, stream)) = stream_or_skip() else { return };
        let gate = StreamGate::close(&stream).unwrap();
        let start = std::time::Instant::now();
        drop(gate);
        stream.synchronize().unwrap();
        assert!(start.elapsed() < GATE_TIMEOUT / 2, "{:?}", start.elapsed());
        // An opened gate that did not time out says so once the stream has passed it.
        let flag = StreamGate::close(&stream).unwrap().open();
        stream.synchronize().unwrap();
        assert!(!flag.load(Ordering::Acquire));
    }
}
