//! Struct-of-arrays ring buffers: one column per field so that `drain()` hands JS one typed
//! array per field without building an object per sample.

/// A row's values; `f64::NAN` stands for "not supported / not read" and becomes `null` in JS.
pub struct Ring<const C: usize> {
  cap: usize,
  head: usize,
  len: usize,
  t: Vec<f64>,
  dev: Vec<u32>,
  cols: [Vec<f64>; C],
  /// Rows overwritten before anyone drained them.
  pub dropped: u64,
  /// Rows ever pushed.
  pub pushed: u64,
}

pub struct Drained<const C: usize> {
  pub t: Vec<f64>,
  pub dev: Vec<u32>,
  pub cols: [Vec<f64>; C],
}

impl<const C: usize> Ring<C> {
  pub fn new(cap: usize) -> Self {
    Self {
      cap,
      head: 0,
      len: 0,
      t: vec![0.0; cap],
      dev: vec![0; cap],
      cols: std::array::from_fn(|_| vec![0.0; cap]),
      dropped: 0,
      pushed: 0,
    }
  }

  /// Overwrites the oldest row when full: a monitor wants the newest data.
  #[inline]
  pub fn push(&mut self, t: f64, dev: u32, vals: &[f64; C]) {
    let i = self.head;
    self.t[i] = t;
    self.dev[i] = dev;
    for (c, v) in self.cols.iter_mut().zip(vals) {
      c[i] = *v;
    }
    self.head = if i + 1 == self.cap { 0 } else { i + 1 };
    if self.len == self.cap {
      self.dropped += 1;
    } else {
      self.len += 1;
    }
    self.pushed += 1;
  }

  /// Moves every row of `other` into `self`, oldest first, and empties `other`.
  pub fn append(&mut self, other: &mut Ring<C>) {
    let start = (other.head + other.cap - other.len) % other.cap;
    for k in 0..other.len {
      let i = (start + k) % other.cap;
      let vals: [f64; C] = std::array::from_fn(|c| other.cols[c][i]);
      self.push(other.t[i], other.dev[i], &vals);
    }
    other.len = 0;
    other.head = 0;
  }

  pub fn len(&self) -> usize {
    self.len
  }

  pub fn capacity(&self) -> usize {
    self.cap
  }

  /// Moves up to `devices.len()` of the oldest rows into caller-owned columns: `values` holds
  /// the timestamp column then each value column, `devices.len()` entries apiece. Rows that do
  /// not fit stay for the next call. Returns the number of rows moved.
  pub fn drain_into(&mut self, values: &mut [f64], devices: &mut [u32]) -> usize {
    let out_cap = devices.len();
    if out_cap == 0 {
      return 0;
    }
    let n = self.len.min(out_cap);
    let start = (self.head + self.cap - self.len) % self.cap;
    let first = n.min(self.cap - start);
    let copy = |dst: &mut [f64], src: &[f64]| {
      dst[..first].copy_from_slice(&src[start..start + first]);
      dst[first..n].copy_from_slice(&src[..n - first]);
    };
    let (t_out, rest) = values.split_at_mut(out_cap);
    copy(t_out, &self.t);
    for (c, out) in self.cols.iter().zip(rest.chunks_exact_mut(out_cap)) {
      copy(out, c);
    }
    devices[..first].copy_from_slice(&self.dev[start..start + first]);
    devices[first..n].copy_from_slice(&self.dev[..n - first]);
    self.len -= n;
    n
  }

  /// Copies the rows out in time order into exactly-sized vectors and empties the ring.
  pub fn drain(&mut self) -> Drained<C> {
    let n = self.len;
    let start = (self.head + self.cap - n) % self.cap;
    let first = n.min(self.cap - start);
    let take = |src: &Vec<f64>| {
      let mut out = Vec::with_capacity(n);
      out.extend_from_slice(&src[start..start + first]);
      out.extend_from_slice(&src[..n - first]);
      out
    };
    let mut dev = Vec::with_capacity(n);
    dev.extend_from_slice(&self.dev[start..start + first]);
    dev.extend_from_slice(&self.dev[..n - first]);
    let out = Drained {
      t: take(&self.t),
      dev,
      cols: std::array::from_fn(|c| take(&self.cols[c])),
    };
    self.len = 0;
    self.head = 0;
    out
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn filled(cap: usize, rows: usize) -> Ring<2> {
    let mut r = Ring::new(cap);
    for i in 0..rows {
      r.push(i as f64, (i % 3) as u32, &[i as f64 * 10.0, i as f64 * 100.0]);
    }
    r
  }

  #[test]
  fn overwrites_the_oldest_rows_and_counts_them_as_dropped() {
    let mut r = filled(4, 10);
    assert_eq!((r.dropped, r.pushed, r.len()), (6, 10, 4));
    let d = r.drain();
    assert_eq!(d.t, vec![6.0, 7.0, 8.0, 9.0]);
    assert_eq!(d.cols[1], vec![600.0, 700.0, 800.0, 900.0]);
    assert_eq!(d.dev, vec![0, 1, 2, 0]);
    assert_eq!(r.len(), 0);
  }

  #[test]
  fn drain_into_moves_the_oldest_rows_across_the_wrap_and_keeps_the_rest() {
    let mut r = filled(5, 7); // rows 2..=6, wrapped
    let mut values = vec![0.0; 3 * 3];
    let mut devices = vec![0u32; 3];
    assert_eq!(r.drain_into(&mut values, &mut devices), 3);
    assert_eq!(&values[0..3], &[2.0, 3.0, 4.0]);
    assert_eq!(&values[3..6], &[20.0, 30.0, 40.0]);
    assert_eq!(&values[6..9], &[200.0, 300.0, 400.0]);
    assert_eq!(devices, vec![2, 0, 1]);
    assert_eq!(r.drain_into(&mut values, &mut devices), 2);
    assert_eq!(&values[0..2], &[5.0, 6.0]);
    assert_eq!(r.drain_into(&mut values, &mut devices), 0);
    r.push(7.0, 1, &[70.0, 700.0]);
    assert_eq!(r.drain().t, vec![7.0]);
  }

  #[test]
  fn append_moves_a_stage_in_order() {
    let mut stage = filled(3, 5);
    let mut r: Ring<2> = Ring::new(8);
    r.append(&mut stage);
    assert_eq!(stage.len(), 0);
    assert_eq!(r.drain().t, vec![2.0, 3.0, 4.0]);
  }
}
