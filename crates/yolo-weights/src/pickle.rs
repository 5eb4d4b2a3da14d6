//! The pickle machine of a zip `.pth`'s `data.pkl`, bounded for untrusted files.
//!
//! It runs the opcodes `torch.save` writes for state dicts (protocol 2: globals, ints,
//! floats, strings, tuples, lists, dicts, `REDUCE`, `BUILD`, persistent ids, the memo)
//! into candle's [`Object`], as candle's own [`Stack`](candle_core::pickle::Stack) does,
//! but refuses what would make that one panic or allocate without bound: a string
//! longer than the bytes left, an integer of more than 8 bytes, an argument missing,
//! and memo copies whose total size passes [`MAX_NODES`] objects (a few bytes that copy
//! a memoised object into itself could otherwise ask for 2^N of them).

use std::collections::HashMap;
use std::rc::Rc;

use candle_core::pickle::Object;

/// The most objects one pickle may build, memo copies included: a state dict of a
/// thousand tensors needs some 30 thousand. (A million took over a second to copy and
/// drop under the fuzzer's AddressSanitizer, a quarter of that 0.8 s.)
pub const MAX_NODES: u64 = 100_000;

/// Why a pickle was refused; the message says what was wrong and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError(pub String);

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The objects on the stack, each with its size in objects.
struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<(Object, u64)>,
    memo: HashMap<u32, Rc<(Object, u64)>>,
    nodes: u64,
}

impl<'a> Machine<'a> {
    fn err<T>(&self, what: impl std::fmt::Display) -> Result<T, PickleError> {
        Err(PickleError(format!("pickle byte {}: {what}", self.pos)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        match self.bytes.get(self.pos..self.pos.saturating_add(n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => self.err(format!(
                "{n} bytes wanted, {} left (truncated)",
                self.bytes.len() - self.pos
            )),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("a line without its newline (truncated)");
        };
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(line).into_owned())
    }

    /// Counts `n` new objects against [`MAX_NODES`].
    fn grow(&mut self, n: u64) -> Result<(), PickleError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return self.err(format!("more than {MAX_NODES} objects"));
        }
        Ok(())
    }

    fn push(&mut self, obj: Object, size: u64) -> Result<(), PickleError> {
        self.grow(1)?;
        self.stack.push((obj, size));
        Ok(())
    }

    fn push_leaf(&mut self, obj: Object) -> Result<(), PickleError> {
        self.push(obj, 1)
    }

    fn pop(&mut self) -> Result<(Object, u64), PickleError> {
        match self.stack.pop() {
            Some(o) => Ok(o),
            None => self.err("the stack is empty"),
        }
    }

    fn pop_to_mark(&mut self) -> Result<(Vec<Object>, u64), PickleError> {
        let Some(mark) = self.stack.iter().rposition(|(o, _)| *o == Object::Mark) else {
            return self.err("no mark on the stack");
        };
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        let size = items.iter().map(|(_, s)| s).sum();
        Ok((items.into_iter().map(|(o, _)| o).collect(), size))
    }

    fn last_mut(&mut self) -> Result<&mut (Object, u64), PickleError> {
        if self.stack.is_empty() {
            return self.err("the stack is empty");
        }
        Ok(self.stack.last_mut().expect("not empty"))
    }

    fn memo_get(&mut self, id: u32) -> Result<(), PickleError> {
        let Some(entry) = self.memo.get(&id).cloned() else {
            return self.err(format!("memo {id} is empty"));
        };
        self.grow(entry.1)?;
        self.stack.push(entry.as_ref().clone());
        Ok(())
    }

    fn memo_put(&mut self, id: u32) -> Result<(), PickleError> {
        let size = self.last_mut()?.1;
        self.grow(size)?;
        let top = self.last_mut()?.clone();
        self.memo.insert(id, Rc::new(top));
        Ok(())
    }

    /// Adds `pairs` (key, value, key, value ...) to the dict on top of the stack.
    fn set_items(&mut self, mut pairs: Vec<Object>, size: u64) -> Result<(), PickleError> {
        if !pairs.len().is_multiple_of(2) {
            return self.err("an odd number of objects for a dict's keys and values");
        }
        let at = self.pos;
        let (top, top_size) = self.last_mut()?;
        let Object::Dict(d) = top else {
            return Err(PickleError(format!(
                "pickle byte {at}: items set on a non-dict"
            )));
        };
        let mut it = pairs.drain(..);
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        *top_size += size;
        Ok(())
    }

    fn append(&mut self, items: Vec<Object>, size: u64) -> Result<(), PickleError> {
        let at = self.pos;
        let (top, top_size) = self.last_mut()?;
        let Object::List(l) = top else {
            return Err(PickleError(format!(
                "pickle byte {at}: append to a non-list"
            )));
        };
        l.extend(items);
        *top_size += size;
        Ok(())
    }

    /// Runs one opcode; true at `STOP`.
    fn step(&mut self) -> Result<bool, PickleError> {
        let op = self.u8()?;
        match op {
            0x80 => {
                self.u8()?; // PROTO
            }
            b'c' => {
                let module_name = self.line()?;
                let class_name = self.line()?;
                self.push_leaf(Object::Class {
                    module_name,
                    class_name,
                })?
            }
            b'K' => {
                let v = self.u8()?;
                self.push_leaf(Object::Int(v.into()))?
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.push_leaf(Object::Int(v.into()))?
            }
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.push_leaf(Object::Int(v))?
            }
            0x8a => {
                let n = usize::from(self.u8()?);
                if n > 8 {
                    return self.err(format!("an integer of {n} bytes (at most 8 are read)"));
                }
                let raw = self.take(n)?;
                let mut le = [0u8; 8];
                le[..n].copy_from_slice(raw);
                // Two's complement of n bytes, sign-extended.
                let v = if n > 0 && n < 8 && raw[n - 1] & 0x80 != 0 {
                    i64::from_le_bytes(le) - (1i64 << (8 * n))
                } else {
                    i64::from_le_bytes(le)
                };
                self.push_leaf(Object::Long(v))?
            }
            b'G' => {
                let v = f64::from_be_bytes(self.array()?);
                self.push_leaf(Object::Float(v))?
            }
            b'X' => {
                let n = u32::from_le_bytes(self.array()?) as usize;
                let raw = self.take(n)?;
                let Ok(s) = std::str::from_utf8(raw) else {
                    return self.err("a string that is not UTF-8");
                };
                self.push_leaf(Object::Unicode(s.to_string()))?
            }
            b'N' => self.push_leaf(Object::None)?,
            0x88 => self.push_leaf(Object::Bool(true))?,
            0x89 => self.push_leaf(Object::Bool(false))?,
            b')' => self.push_leaf(Object::Tuple(Vec::new()))?,
            b']' => self.push_leaf(Object::List(Vec::new()))?,
            b'}' => self.push_leaf(Object::Dict(Vec::new()))?,
            b'(' => self.push_leaf(Object::Mark)?,
            b't' => {
                let (items, size) = self.pop_to_mark()?;
                self.push(Object::Tuple(items), size + 1)?
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                let mut size = 1;
                for _ in 0..n {
                    let (o, s) = self.pop()?;
                    items.push(o);
                    size += s;
                }
                items.reverse();
                self.push(Object::Tuple(items), size)?
            }
            b'a' => {
                let (v, s) = self.pop()?;
                self.append(vec![v], s)?
            }
            b'e' => {
                let (items, size) = self.pop_to_mark()?;
                self.append(items, size)?
            }
            b's' => {
                let (v, vs) = self.pop()?;
                let (k, ks) = self.pop()?;
                self.set_items(vec![k, v], ks + vs)?
            }
            b'u' => {
                let (items, size) = self.pop_to_mark()?;
                self.set_items(items, size)?
            }
            b'd' => {
                let (items, size) = self.pop_to_mark()?;
                self.push(Object::Dict(Vec::new()), 1)?;
                self.set_items(items, size)?
            }
            b'Q' => {
                let (id, s) = self.pop()?;
                self.push(Object::PersistentLoad(Box::new(id)), s + 1)?
            }
            b'R' | 0x81 => {
                let (args, a) = self.pop()?;
                let (callable, c) = self.pop()?;
                let ordered = matches!(&callable, Object::Class { module_name, class_name }
                    if module_name == "collections"
                        && (class_name == "OrderedDict" || class_name == "defaultdict"));
                if ordered && op == b'R' {
                    self.push_leaf(Object::Dict(Vec::new()))?
                } else {
                    let obj = Object::Reduce {
                        callable: Box::new(callable),
                        args: Box::new(args),
                    };
                    self.push(obj, a + c + 1)?
                }
            }
            b'b' => {
                let (args, a) = self.pop()?;
                let (obj, o) = self.pop()?;
                let built = match (obj, args) {
                    (Object::Dict(mut d), Object::Dict(mut more)) => {
                        d.append(&mut more);
                        Object::Dict(d)
                    }
                    (obj, args) => Object::Build {
                        callable: Box::new(obj),
                        args: Box::new(args),
                    },
                };
                self.push(built, a + o)?
            }
            b'h' => {
                let id = self.u8()?;
                self.memo_get(id.into())?
            }
            b'j' => {
                let id = u32::from_le_bytes(self.array()?);
                self.memo_get(id)?
            }
            b'q' => {
                let id = self.u8()?;
                self.memo_put(id.into())?
            }
            b'r' => {
                let id = u32::from_le_bytes(self.array()?);
                self.memo_put(id)?
            }
            b'.' => return Ok(true),
            other => {
                self.pos -= 1;
                return self.err(format!("opcode 0x{other:02x} is not one torch.save writes"));
            }
        }
        Ok(false)
    }
}

/// Runs the pickle `bytes` to its `STOP` and returns the object on top of the stack.
pub fn unpickle(bytes: &[u8]) -> Result<Object, PickleError> {
    let mut m = Machine {
        bytes,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        nodes: 0,
    };
    while !m.step()? {}
    Ok(m.pop()?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_state_dict_pickle_is_read() {
        // {'w': (1, 'x', True, 2.5, None, -2)} as protocol 2 with a memo put and get.
        let mut p = vec![
            0x80, 2, b'}', b'q', 0, b'X', 1, 0, 0, 0, b'w', b'(', b'K', 1,
        ];
        p.extend_from_slice(&[b'X', 1, 0, 0, 0, b'x', 0x88, b'G']);
        p.extend_from_slice(&2.5f64.to_be_bytes());
        p.extend_from_slice(&[b'N', 0x8a, 1, 0xfe, b't', b's', b'h', 0, b'.']);
        let obj = unpickle(&p).unwrap();
        let want = Object::Dict(vec![(
            Object::Unicode("w".into()),
            Object::Tuple(vec![
                Object::Int(1),
                Object::Unicode("x".into()),
                Object::Bool(true),
                Object::Float(2.5),
                Object::None,
                Object::Long(-2),
            ]),
        )]);
        // The memo holds the dict as it was put (empty); the top is its copy.
        assert_eq!(obj, Object::Dict(vec![]));
        let mut p2 = p.clone();
        p2.truncate(p.len() - 3);
        p2.push(b'.');
        assert_eq!(unpickle(&p2).unwrap(), want);
    }

    #[test]
    fn what_would_panic_or_allocate_without_bound_is_refused() {
        let cases: [(&[u8], &str); 6] = [
            (b"X\xff\xff\xff\xff", "4294967295 bytes wanted"),
            (b"\x8a\x40\x01", "an integer of 64 bytes"),
            (b"t", "no mark"),
            (b"K\x01s", "the stack is empty"),
            (b"h\x07", "memo 7 is empty"),
            (b"K\x01", "truncated"),
        ];
        for (p, want) in cases {
            let e = unpickle(p).unwrap_err();
            assert!(e.0.contains(want), "{p:?}: {e}");
        }
        // Doubling a list through the memo: 2^60 objects asked for in ~400 bytes.
        let mut p = vec![b']', b'q', 0];
        for _ in 0..60 {
            p.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        p.push(b'.');
        let e = unpickle(&p).unwrap_err();
        assert!(e.0.contains("more than 100000 objects"), "{e}");
    }
}
