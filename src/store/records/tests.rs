use super::*;

#[test]
fn the_first_id_of_a_time_sorts_before_every_id_made_since() {
    let now = DateTime::now();
    let first = first_id_at(now);
    assert!(first <= ObjectId::new());
    assert_eq!(
        first.timestamp().timestamp_millis(),
        now.timestamp_millis() / 1000 * 1000
    );
}

#[test]
fn a_stuck_row_counts_any_numeric_type_and_dates_by_id_when_needed() {
    let id = ObjectId::new();
    let row = doc! {"_id": "MER", "n": 3.0, "oldest": Bson::Null, "firstId": id};
    let stuck = stuck_row(&row);
    assert_eq!(stuck.count, 3);
    assert_eq!(stuck.oldest, Some(id.timestamp()));
}
