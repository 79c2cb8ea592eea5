//! The wgpu device: WGSL compute kernels on any GPU wgpu reaches (Vulkan, Metal, DX12, GL),
//! and on software Vulkan (Mesa lavapipe) for CI.
//!
//! Device plumbing only, knowing no op: adapter choice, buffers, a pipeline cache, a
//! bind-group cache (so a plan's bind groups are built once per input shape), and one command
//! encoder per forward (every op records a dispatch; `submit` sends them once). The kernels
//! and their launchers live with their ops (`ops/<op>/wgpu.rs` + `<op>.wgsl`); the backend
//! of [`crate::dispatch::wgpu`] calls them.
//!
//! Adapter choice: discrete GPU, then integrated, virtual, other, CPU; `WGPU_BACKEND`
//! (vulkan, metal, dx12, gl) restricts the backends and `DINOEDGE_WGPU_ADAPTER` (or the
//! session's `adapter`: a name substring or an index from `dinoedge info --backend wgpu`)
//! picks one.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Result, RuntimeError};

const COMMON: &str = include_str!("common.wgsl");

/// A WGSL kernel: a name (cache key) and its source.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    /// Prepend `enable f16;` (the adapter must have SHADER_F16).
    pub f16: bool,
    /// WGSL the source uses from other ops (an op's shared functions), after `common.wgsl`.
    pub prelude: &'static [&'static str],
    /// Text substitutions applied to the source (e.g. the weight type).
    pub defines: &'static [(&'static str, &'static str)],
}

/// A storage buffer of f32 values (or f16 halves, for f16 weights).
pub struct GpuBuffer {
    pub buf: wgpu::Buffer,
    /// Elements (f32 or f16).
    pub len: usize,
    id: u64,
}

pub(crate) fn err(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Device {
        backend: "wgpu".into(),
        reason: reason.into(),
    }
}

fn unavailable(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BackendUnavailable {
        backend: "wgpu".into(),
        reason: reason.into(),
    }
}

/// One adapter as `dinoedge info --backend wgpu` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Adapters in preference order.
fn adapters(inst: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut v = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    v.sort_by_key(|a| rank(a.get_info().device_type));
    v
}

/// Every adapter wgpu finds here, best first.
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters(&instance())
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let (i, l) = (a.get_info(), a.limits());
            AdapterSummary {
                index,
                name: i.name,
                backend: format!("{:?}", i.backend),
                device_type: format!("{:?}", i.device_type),
                driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
                shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
                max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                max_buffer_size: l.max_buffer_size,
                max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            }
        })
        .collect()
}

type BindKey = (&'static str, &'static str, Vec<u64>, Vec<u32>);

pub struct WgpuDevice {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pipelines: RefCell<HashMap<(&'static str, &'static str), wgpu::ComputePipeline>>,
    bind_groups: RefCell<HashMap<BindKey, wgpu::BindGroup>>,
    encoder: RefCell<Option<wgpu::CommandEncoder>>,
    next_id: Cell<u64>,
    staging: RefCell<Option<wgpu::Buffer>>,
    /// Bound where a kernel's optional input is absent.
    dummy: GpuBuffer,
    errors: Arc<Mutex<Vec<String>>>,
}

impl WgpuDevice {
    /// Opens the preferred adapter (or the one `adapter` / `DINOEDGE_WGPU_ADAPTER` names),
    /// with 16-bit shader arithmetic when `f16`.
    pub fn new(f16: bool, adapter: Option<&str>) -> Result<Self> {
        let inst = instance();
        let all = adapters(&inst);
        if all.is_empty() {
            return Err(unavailable(
                "no GPU adapter found (install a Vulkan driver; on machines without a GPU, Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)",
            ));
        }
        let want = adapter
            .map(str::to_string)
            .or_else(|| std::env::var("DINOEDGE_WGPU_ADAPTER").ok());
        let chosen = match want.as_deref() {
            None | Some("") => all.into_iter().next().expect("non-empty"),
            Some(w) => {
                let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
                let pick = match w.parse::<usize>() {
                    Ok(i) => all.into_iter().nth(i),
                    Err(_) => all
                        .into_iter()
                        .find(|a| a.get_info().name.to_lowercase().contains(&w.to_lowercase())),
                };
                pick.ok_or_else(|| {
                    unavailable(format!("no adapter matches {w:?} (available: {names:?})"))
                })?
            }
        };
        let info = chosen.get_info();
        let mut features = wgpu::Features::empty();
        if f16 {
            if !chosen.features().contains(wgpu::Features::SHADER_F16) {
                return Err(unavailable(format!(
                    "adapter {:?} lacks SHADER_F16, needed for --precision f16 (use f32)",
                    info.name
                )));
            }
            features |= wgpu::Features::SHADER_F16;
        }
        let limits = chosen.limits();
        let (device, queue) = pollster::block_on(chosen.request_device(&wgpu::DeviceDescriptor {
            label: Some("dinoedge"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| unavailable(format!("cannot open {:?}: {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.to_string());
        }));
        let dummy_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("dummy"),
            contents: &[0u8; 16],
            usage: wgpu::BufferUsages::STORAGE,
        });
        Ok(WgpuDevice {
            device,
            queue,
            adapter: info,
            limits,
            pipelines: RefCell::new(HashMap::new()),
            bind_groups: RefCell::new(HashMap::new()),
            encoder: RefCell::new(None),
            next_id: Cell::new(1),
            staging: RefCell::new(None),
            dummy: GpuBuffer {
                buf: dummy_buf,
                len: 4,
                id: 0,
            },
            errors,
        })
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter
    }

    /// The device limits the session runs under.
    pub fn adapter_limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    pub fn dummy(&self) -> &GpuBuffer {
        &self.dummy
    }

    fn id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Checks a buffer of `bytes` for `what` against the device limits.
    fn check_size(&self, bytes: u64, what: &str) -> Result<()> {
        let max = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if bytes > max {
            return Err(err(format!(
                "{what} needs a {bytes}-byte buffer; adapter {:?} binds at most {max} bytes (max_storage_buffer_binding_size): use a smaller input or batch",
                self.adapter.name
            )));
        }
        Ok(())
    }

    /// A storage buffer holding `bytes` (`len` elements), padded to whole words.
    pub fn buffer(&self, bytes: &[u8], len: usize, what: &str) -> Result<GpuBuffer> {
        self.check_size(bytes.len() as u64, what)?;
        let mut padded;
        let contents = if !bytes.len().is_multiple_of(4) || bytes.is_empty() {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            &padded[..]
        } else {
            bytes
        };
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
            });
        Ok(GpuBuffer {
            buf,
            len,
            id: self.id(),
        })
    }

    /// A zeroed storage buffer of `len` f32.
    pub fn zeros(&self, len: usize, what: &str) -> Result<GpuBuffer> {
        let bytes = (len.max(1) * 4) as u64;
        self.check_size(bytes, what)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Ok(GpuBuffer {
            buf,
            len,
            id: self.id(),
        })
    }

    fn pipeline(&self, k: &Kernel, entry: &'static str) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = self.pipelines.borrow().get(&(k.name, entry)) {
            return Ok(p.clone());
        }
        let mut src = String::new();
        if k.f16 {
            src.push_str("enable f16;\n");
        }
        src.push_str(COMMON);
        for p in k.prelude {
            src.push_str(p);
        }
        let mut body = k.source.to_string();
        for (from, to) in k.defines {
            body = body.replace(from, to);
        }
        src.push_str(&body);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(k.name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.name),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(err(format!(
                "kernel {} ({entry}) failed to compile: {e}",
                k.name
            )));
        }
        self.pipelines
            .borrow_mut()
            .insert((k.name, entry), pipeline.clone());
        Ok(pipeline)
    }

    /// Records one dispatch of `k::entry` with `buffers` bound at 0.. and `params` as the
    /// uniform after them. Bind groups are cached by buffer identity and parameters.
    pub fn dispatch(
        &self,
        k: &Kernel,
        entry: &'static str,
        buffers: &[&GpuBuffer],
        params: &[u32],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.0 > max || groups.1 > max || groups.2 > max {
            return Err(err(format!(
                "{} needs {groups:?} workgroups; the adapter allows {max} per dimension",
                k.name
            )));
        }
        let pipeline = self.pipeline(k, entry)?;
        let key: BindKey = (
            k.name,
            entry,
            buffers.iter().map(|b| b.id).collect(),
            params.to_vec(),
        );
        let mut groups_cache = self.bind_groups.borrow_mut();
        if !groups_cache.contains_key(&key) {
            let mut words = params.to_vec();
            words.resize(params.len().div_ceil(4).max(1) * 4, 0);
            let uniform = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("params"),
                    contents: bytemuck::cast_slice(&words),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let mut entries: Vec<wgpu::BindGroupEntry> = buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.buf.as_entire_binding(),
                })
                .collect();
            entries.push(wgpu::BindGroupEntry {
                binding: buffers.len() as u32,
                resource: uniform.as_entire_binding(),
            });
            let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(k.name),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            groups_cache.insert(key.clone(), bg);
        }
        let bg = &groups_cache[&key];
        let mut enc = self.encoder.borrow_mut();
        let enc = enc.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("forward"),
                })
        });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(k.name),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        Ok(())
    }

    /// Overwrites a buffer of the same length.
    pub fn write(&self, dst: &GpuBuffer, data: &[f32]) -> Result<()> {
        if data.len() != dst.len {
            return Err(RuntimeError::input(
                "buffer",
                format!("write of {} values into {}", data.len(), dst.len),
            ));
        }
        self.queue
            .write_buffer(&dst.buf, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Drops cached bind groups when many shapes have come and gone (they pin buffers).
    pub fn trim_caches(&self) {
        let mut cache = self.bind_groups.borrow_mut();
        if cache.len() > 4096 {
            cache.clear();
        }
    }

    /// Submits recorded work.
    pub fn submit(&self) -> Result<()> {
        if let Some(enc) = self.encoder.borrow_mut().take() {
            self.queue.submit(Some(enc.finish()));
        }
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if !errors.is_empty() {
            let e = errors.join("; ");
            errors.clear();
            return Err(err(e));
        }
        Ok(())
    }

    /// Copies several buffers to the host through one staging buffer and one mapping.
    pub fn read_all(&self, reads: &mut [(&GpuBuffer, &mut [f32])]) -> Result<()> {
        self.submit()?;
        let total: u64 = reads.iter().map(|(_, d)| (d.len() * 4) as u64).sum();
        let mut staging = self.staging.borrow_mut();
        if staging.as_ref().is_none_or(|s| s.size() < total) {
            *staging = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: total.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let st = staging.as_ref().expect("created");
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        let mut off = 0u64;
        for (src, dst) in reads.iter() {
            let n = (dst.len() * 4) as u64;
            enc.copy_buffer_to_buffer(&src.buf, 0, st, off, n);
            off += n;
        }
        self.queue.submit(Some(enc.finish()));
        let slice = st.slice(..total.max(4));
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| err(format!("device poll failed: {e}")))?;
        rx.recv()
            .map_err(|_| err("readback callback dropped"))?
            .map_err(|e| err(format!("readback failed: {e}")))?;
        {
            let view = slice
                .get_mapped_range()
                .map_err(|e| err(format!("readback mapping failed: {e}")))?;
            let bytes: &[u8] = &view;
            let mut off = 0usize;
            for (_, dst) in reads.iter_mut() {
                let n = dst.len() * 4;
                dst.copy_from_slice(bytemuck::cast_slice(&bytes[off..off + n]));
                off += n;
            }
        }
        st.unmap();
        let errors = std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()));
        if !errors.is_empty() {
            return Err(err(errors.join("; ")));
        }
        Ok(())
    }
}

/// A 2-D grid of workgroups covering `items` items at `per_group` per workgroup
/// (x up to 32768, matching `linear_id` in common.wgsl).
pub fn linear_groups(items: usize, per_group: usize) -> (u32, u32, u32) {
    let g = items.div_ceil(per_group).max(1);
    ((g.min(32768)) as u32, g.div_ceil(32768) as u32, 1)
}
