//! A database's relation map file (`pg_filenode.map`): where its mapped
//! catalogs (pg_class, pg_attribute, pg_proc, pg_type and their indexes)
//! keep their storage. Parsed here to locate the source's `pg_class`.

use std::collections::HashMap;

use crate::pg::compat::{RELMAP_FILE_SIZE as FILE_SIZE, RELMAP_MAX_MAPPINGS as MAX_MAPPINGS};

const FILE_MAGIC: i32 = 0x592717;

#[derive(Debug, PartialEq, Eq)]
pub struct RelationMap {
    /// relation OID -> relfilenode
    pub mappings: HashMap<u32, u32>,
}

impl RelationMap {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != FILE_SIZE {
            return Err(format!(
                "relation map file has {} bytes, expected {FILE_SIZE}",
                bytes.len()
            ));
        }
        let int_at = |at: usize| i32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if int_at(0) != FILE_MAGIC {
            return Err(format!("relation map file has magic {:#x}", int_at(0)));
        }
        let count = int_at(4);
        if count < 0 || count as usize > MAX_MAPPINGS {
            return Err(format!("relation map file claims {count} mappings"));
        }
        let mappings = (0..count as usize)
            .map(|i| {
                let at = 8 + i * 8;
                (int_at(at) as u32, int_at(at + 4) as u32)
            })
            .collect();
        Ok(Self { mappings })
    }

    pub fn filenode(&self, relation: u32) -> Option<u32> {
        self.mappings.get(&relation).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(u32, u32)]) -> Vec<u8> {
        let mut bytes = vec![0u8; FILE_SIZE];
        bytes[0..4].copy_from_slice(&FILE_MAGIC.to_le_bytes());
        bytes[4..8].copy_from_slice(&(entries.len() as i32).to_le_bytes());
        for (i, (oid, node)) in entries.iter().enumerate() {
            bytes[8 + i * 8..12 + i * 8].copy_from_slice(&oid.to_le_bytes());
            bytes[12 + i * 8..16 + i * 8].copy_from_slice(&node.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn reads_mappings() {
        let map = RelationMap::parse(&file(&[(1259, 1259), (1249, 16999)])).unwrap();
        assert_eq!(map.filenode(1259), Some(1259));
        assert_eq!(map.filenode(1249), Some(16999));
        assert_eq!(map.filenode(1255), None);
    }

    #[test]
    fn rejects_what_is_not_a_map() {
        assert!(RelationMap::parse(&[0u8; 100]).is_err());
        assert!(RelationMap::parse(&[0u8; FILE_SIZE]).is_err());
        let mut too_many = file(&[]);
        too_many[4..8].copy_from_slice(&100i32.to_le_bytes());
        assert!(RelationMap::parse(&too_many).is_err());
    }
}
