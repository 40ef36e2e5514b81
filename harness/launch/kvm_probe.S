# Source of the KVM probe guest in accel.py (_PROBE_CODE). Rebuild with:
#   as --32 -o probe.o kvm_probe.S && objcopy -O binary probe.o probe.bin && xxd -p probe.bin
# Probe guest: real mode -> protected mode -> paging + long mode -> out 0xf4.
# Linked at offset 0 of a 64 KiB BIOS image mapped at 0xF0000 (and at 0xFFFF0000 for reset).
        .code16
        .org 0
start:
        cli
        mov $0x01, %al          # stage 1: real mode ran
        out %al, $0x80
        lgdtl %cs:gdtr
        mov %cr0, %eax
        or $1, %eax
        mov %eax, %cr0
        ljmpl $0x08, $(0xF0000 + pm32)
        .code32
pm32:
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        # page tables at 0x1000: PML4 -> PDPT (0x2000) -> PD (0x3000) with one 2 MiB page
        mov $0x1000, %edi
        xor %eax, %eax
        mov $3072, %ecx
        rep stosl
        movl $0x2003, 0x1000
        movl $0x3003, 0x2000
        movl $0x83, 0x3000
        mov %cr4, %eax
        or $0x20, %eax          # PAE
        mov %eax, %cr4
        mov $0x1000, %eax
        mov %eax, %cr3
        mov $0xC0000080, %ecx   # EFER.LME
        rdmsr
        or $0x100, %eax
        wrmsr
        mov %cr0, %eax
        or $0x80000000, %eax    # PG
        mov %eax, %cr0
        ljmp $0x18, $(0xF0000 + lm64)
        .code64
lm64:
        mov $0x42, %al
        out %al, $0xf4
1:      hlt
        jmp 1b

        .p2align 3
gdt:
        .quad 0
        .quad 0x00CF9A000000FFFF   # 0x08 code32
        .quad 0x00CF92000000FFFF   # 0x10 data
        .quad 0x00AF9A000000FFFF   # 0x18 code64
gdtr:
        .word gdtr - gdt - 1
        .long 0xF0000 + gdt
